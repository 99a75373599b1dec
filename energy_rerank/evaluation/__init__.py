"""Evaluation of reranking: offline on recorded episodes (closed-loop LIBERO lives with the server)."""
