"""The plain-torch scorer: the reference every other backend is checked against."""

from __future__ import annotations

import torch

from energy_rerank.energy import EnergyModel


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
