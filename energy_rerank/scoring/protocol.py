"""The scorer interface the reranker talks to.

`Scorer.score(hidden, valid, candidates)` is the single call that turns contexts and candidate
chunks into energies. Every backend (torch, onnxruntime, Triton) implements it, so the reranker
never knows which one runs.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class Scorer(Protocol):
    name: str  # backend name, reported in responses and metrics

    def score(self, hidden: torch.Tensor, valid: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """hidden [B, S, D], valid [B, S] bool, candidates [B, N, H, A] -> energies [B, N] float32."""
        ...
