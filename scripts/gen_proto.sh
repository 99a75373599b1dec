#!/usr/bin/env bash
# Regenerate the Python gRPC stubs from proto/ with grpcio-tools.
#
# The stubs are committed (a test checks they match a fresh generation), in two copies:
#   clients/energy_rerank_client/_proto  for the light client distribution (no torch)
#   server/_proto                        for the server (energy_rerank.server._proto)
# The server does not depend on the client distribution, so each ships its own copy.
#
# Usage: scripts/gen_proto.sh [OUT_ROOT]   (OUT_ROOT defaults to the repository root;
#        the test passes a temporary directory and compares.)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT_ROOT="${1:-$ROOT}"
PYTHON="${PYTHON:-python}"
[ -x "$ROOT/.venv/bin/python" ] && [ "$PYTHON" = python ] && PYTHON="$ROOT/.venv/bin/python"

TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

"$PYTHON" -m grpc_tools.protoc -I "$ROOT/proto" \
  --python_out="$TMP" --pyi_out="$TMP" --grpc_python_out="$TMP" \
  "$ROOT/proto/energy_rerank/v1/rerank.proto"

# protoc writes package-absolute imports (`from energy_rerank.v1 import rerank_pb2`), which
# would collide with the energy_rerank package; the stubs live flat in _proto/, so import
# relatively instead.
sed -i 's/^from energy_rerank\.v1 import rerank_pb2 as/from . import rerank_pb2 as/' \
  "$TMP/energy_rerank/v1/rerank_pb2_grpc.py"

for dest in clients/energy_rerank_client/_proto server/_proto; do
  mkdir -p "$OUT_ROOT/$dest"
  cp "$TMP"/energy_rerank/v1/rerank_pb2.py "$TMP"/energy_rerank/v1/rerank_pb2.pyi \
    "$TMP"/energy_rerank/v1/rerank_pb2_grpc.py "$OUT_ROOT/$dest/"
  printf '"""Generated from proto/energy_rerank/v1/rerank.proto by scripts/gen_proto.sh. Do not edit."""\n' \
    >"$OUT_ROOT/$dest/__init__.py"
done
echo "stubs written under $OUT_ROOT/{clients/energy_rerank_client/_proto,server/_proto}"
