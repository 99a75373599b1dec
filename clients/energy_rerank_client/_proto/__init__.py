"""Generated from proto/energy_rerank/v1/rerank.proto by scripts/gen_proto.sh. Do not edit."""
