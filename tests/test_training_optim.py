"""GuardedOptimizer: warm-up, clipping, and skip-and-count with bitwise-unchanged weights."""

from __future__ import annotations

import math

import pytest
import torch

from energy_rerank.training.optim import GuardedOptimizer, OptimConfig


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.LayerNorm(8), torch.nn.Linear(8, 1))


def _snapshot(m: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in m.parameters()]


def _same(a: list[torch.Tensor], m: torch.nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, m.parameters(), strict=True))


def test_warmup_then_constant_lr() -> None:
    opt = GuardedOptimizer(_model().parameters(), OptimConfig(lr=1e-2, warmup_steps=4))
    lrs = [opt.lr_at(i) for i in range(6)]
    assert lrs[:4] == pytest.approx([1e-2 * k / 5 for k in (1, 2, 3, 4)])
    assert lrs[4:] == pytest.approx([1e-2, 1e-2])


@pytest.mark.parametrize("bad", ["nan_loss", "inf_loss", "huge_grad", "loss_threshold"])
def test_bad_step_is_skipped_weights_and_moments_unchanged(bad: str) -> None:
    m = _model()
    opt = GuardedOptimizer(m.parameters(), OptimConfig(lr=1e-2, warmup_steps=0, skip_grad_norm=10.0, skip_loss=100.0))
    x = torch.randn(16, 4)
    assert opt.step(m(x).pow(2).mean()).applied  # one good step so AdamW has moments to protect
    weights = _snapshot(m)
    moments = {k: v.clone() for k, v in opt.optimizer.state[next(iter(m.parameters()))].items()}
    if bad == "nan_loss":
        loss = m(x).pow(2).mean() * float("nan")
    elif bad == "inf_loss":
        loss = m(x).pow(2).mean() + float("inf")
    elif bad == "huge_grad":
        g = m(x).mean()
        loss = g + (1e7 * g - (1e7 * g).detach())  # value stays g, gradient is 1e7 x larger
    else:
        loss = 1e3 + 0.0 * m(x).sum()  # finite, zero gradient, above skip_loss
    r = opt.step(loss)
    assert not r.applied and r.reason, r
    assert opt.skipped_steps == 1 and opt.applied_steps == 1
    assert _same(weights, m), "a skipped step changed the weights"
    state = opt.optimizer.state[next(iter(m.parameters()))]
    assert all(torch.equal(v, state[k]) for k, v in moments.items()), "a skipped step changed AdamW moments"
    assert all(p.grad is None for p in m.parameters())
    assert opt.step(m(x).pow(2).mean()).applied  # training goes on
    assert not _same(weights, m)


def test_clipping_bounds_the_update_and_reports_preclip_norm() -> None:
    m = _model()
    opt = GuardedOptimizer(m.parameters(), OptimConfig(clip_grad_norm=0.5, skip_grad_norm=1e9))
    x = torch.randn(16, 4)
    r = opt.step((m(x) * 100).pow(2).mean())
    assert r.applied and r.grad_norm > 0.5  # the pre-clip norm is what gets reported and checked


def test_relative_spike_guard_and_state_roundtrip() -> None:
    m = _model()
    cfg = OptimConfig(lr=1e-3, warmup_steps=0, skip_grad_norm=1e9, skip_grad_ratio=5.0)
    opt = GuardedOptimizer(m.parameters(), cfg)
    x = torch.randn(16, 4)
    for _ in range(12):
        assert opt.step(m(x).pow(2).mean()).applied
    typical = opt.typical_grad_norm
    assert math.isfinite(typical) and typical > 0
    r = opt.step(m(x).pow(2).mean() * 1000)
    assert not r.applied and "running mean" in r.reason
    other = GuardedOptimizer(_model().parameters(), cfg)
    other.load_state_dict(opt.state_dict())
    assert (other.applied_steps, other.skipped_steps) == (12, 1)
    assert other.typical_grad_norm == pytest.approx(typical)
