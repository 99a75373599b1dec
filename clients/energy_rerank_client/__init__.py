"""energy-rerank-client: talk to an energy-rerank server with numpy arrays (no torch needed).

Usage:
    from energy_rerank_client import RerankClient
    with RerankClient("127.0.0.1:50051") as client:
        result = client.select(images={"front": frame}, state=state, num_candidates=64)
        result.chunk  # [H, A] float32
"""

from energy_rerank_client.broker import ChunkBroker
from energy_rerank_client.client import (
    AsyncRerankClient,
    ModelInfo,
    ReloadResult,
    RerankClient,
    RetryPolicy,
    ScoreResult,
    SelectResult,
    replicas,
)

__all__ = [
    "AsyncRerankClient",
    "ChunkBroker",
    "ModelInfo",
    "ReloadResult",
    "RerankClient",
    "RetryPolicy",
    "ScoreResult",
    "SelectResult",
    "replicas",
]
