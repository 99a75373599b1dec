"""The scorer interface the reranker talks to, and its plain-torch implementation.

`Scorer.score(hidden, valid, candidates)` is the single call that turns contexts and candidate
chunks into energies. Backends (torch here; Triton and onnxruntime in energy_rerank.kernels)
implement the same protocol, so the reranker never knows which one runs.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

from energy_rerank.energy import EnergyModel


@runtime_checkable
class Scorer(Protocol):
    name: str  # backend name, reported in responses and metrics

    def score(self, hidden: torch.Tensor, valid: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """hidden [B, S, D], valid [B, S] bool, candidates [B, N, H, A] -> energies [B, N] float32."""
        ...


class TorchScorer:
    """Eager PyTorch: context encoded once per observation, all candidates in one SDPA call."""

    name = "torch"

    def __init__(self, model: EnergyModel) -> None:
        self.model = model.eval()

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.inference_mode()
    def score(self, hidden: torch.Tensor, valid: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        dev = self.device
        ctx = self.model.encode_context(hidden.to(dev), valid.to(dev))
        return self.model.score(ctx, candidates.to(dev)).float()  # [B, N]
