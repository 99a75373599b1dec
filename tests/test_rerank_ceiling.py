"""The selection-ceiling and implied-target diagnostics of energy_rerank.training.rerank_eval."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from energy_rerank.energy import EnergyModel
from energy_rerank.training.config import TINY_REFERENCE_ENERGY
from energy_rerank.training.rerank_eval import ceiling_shares, implied_target


def _candidates(b: int = 64, n: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    expert = torch.randn(b, 8, 7, generator=g)
    base = expert + 0.3 * torch.randn(b, 8, 7, generator=g)
    cands = base[:, None] + 0.1 * torch.randn(b, n, 8, 7, generator=g)
    cands[:, 0] = base
    return cands, expert


def test_ceiling_endpoints_and_order() -> None:
    cands, expert = _candidates()
    c = ceiling_shares(cands, expert, fractions=(1.0, 0.5, 0.0))
    # A guess equal to the base chunk keeps it (share 0); a perfect guess is the oracle (share 1).
    assert c["shrunk"][0] == pytest.approx(0.0, abs=1e-5)
    assert c["shrunk"][2] == pytest.approx(1.0, abs=1e-5)
    assert c["independent"][2] == pytest.approx(1.0, abs=1e-5)
    # A better guess recovers more, and an error independent of the policy's beats a shrunk copy.
    assert c["shrunk"][0] < c["shrunk"][1] < c["shrunk"][2]
    assert c["independent"][0] > c["shrunk"][0] + 0.2
    assert c["independent"][1] > c["shrunk"][1]


def test_implied_target_finds_the_minimum_and_keeps_fixed_dims() -> None:
    torch.manual_seed(0)
    model = EnergyModel(dataclasses.replace(TINY_REFERENCE_ENERGY, activation="identity"))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ctx = model.encode_context(torch.randn(3, 5, 64), None)
    start = torch.randn(3, 8, 7)
    out = implied_target(model, ctx, start, fixed_dims=(6,), steps=50, lr=0.05)
    with torch.no_grad():
        assert (model.score(ctx, out[:, None]) < model.score(ctx, start[:, None]) - 1e-3).all()
    assert torch.equal(out[..., 6], start[..., 6])
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # weights untouched
    assert all(p.requires_grad for p in model.parameters())
