"""The seed's energy head (sigmoid to (0.1, 2.1), tau 0.5) against our default (softplus, tau 1),
same features, same optimiser, a few hundred steps.

What the seed reported (SEEDS.md section 4): a flat loss, energies clustered in a narrow band,
logits almost equal. What this test measures and asserts:
- the default learns: held-out loss falls, E_pos < E_neg, ranking accuracy well above chance;
- the seed head is boxed in: its energies stay inside (0.1, 2.1), so at tau 0.5 its logits can
  never spread by more than 4 (the InfoNCE floor the seed hit later in training).
- the seed head learns less on the same budget (smaller held-out loss drop, energy std growth).
Under AdamW (scale-invariant updates) the seed head does *not* stall completely in the first few
hundred steps here, unlike the seed's report; the numbers are printed so that stays visible.
"""

from __future__ import annotations

import pytest
import torch

from energy_rerank.config import EnergyConfig
from energy_rerank.energy import EnergyModel
from energy_rerank.training.losses import LossConfig, NegativesConfig, energy_loss
from energy_rerank.training.optim import GuardedOptimizer, OptimConfig
from energy_rerank.training.synthetic_features import SyntheticFeatureConfig, make_synthetic_features

SYN = SyntheticFeatureConfig(latent_dim=3, tokens=8, min_valid=4)
NEG = NegativesConfig(noise_sigmas=(0.3, 0.6), shuffled=1, other_samples=3)
STEPS, BATCH, HELD = 200, 24, 64
HEAD = dict(context_dim=SYN.context_dim, action_dim=SYN.action_dim, chunk_len=SYN.chunk_len, hidden=32, heads=2, pe_dropout=0.0)


def _heldout(model: EnergyModel, data, loss: LossConfig) -> dict[str, float]:
    model.eval()
    with torch.no_grad():
        out = energy_loss(model, data, loss, 0, torch.Generator().manual_seed(5))
    model.train()
    return {k: float(v) for k, v in out.metrics.items()}


def _run(energy: EnergyConfig, loss: LossConfig) -> dict[str, list[dict[str, float]]]:
    train = make_synthetic_features(2048, SYN, seed=0)
    held = make_synthetic_features(HELD, SYN, seed=1)
    torch.manual_seed(0)
    model = EnergyModel(energy)
    opt = GuardedOptimizer(model.parameters(), OptimConfig(lr=2e-3, warmup_steps=20, skip_grad_norm=1e3, skip_grad_ratio=20))
    gen = torch.Generator().manual_seed(0)
    trace = {"train": [], "held": [_heldout(model, held, loss)]}
    for step in range(STEPS):
        batch = train.select(torch.randint(0, len(train), (BATCH,), generator=gen))
        out = energy_loss(model, batch, loss, step, gen)
        opt.step(out.loss)
        trace["train"].append({k: float(v) for k, v in out.metrics.items()})
    trace["held"].append(_heldout(model, held, loss))
    trace["skipped"] = [{"n": float(opt.skipped_steps)}]
    return trace


@pytest.fixture(scope="module")
def runs() -> dict[str, dict[str, list[dict[str, float]]]]:
    return {
        "seed: sigmoid (0.1, 2.1), tau 0.5": _run(EnergyConfig(**HEAD, activation="sigmoid"), LossConfig(tau=0.5, negatives=NEG)),
        "default: softplus, tau 1.0": _run(EnergyConfig(**HEAD), LossConfig(tau=1.0, negatives=NEG)),
    }


def _report(name: str, trace) -> None:
    first, last = trace["held"][0], trace["held"][-1]
    t0, t1 = trace["train"][0], trace["train"][-1]
    print(
        f"\n{name}: held-out loss {first['loss']:.3f} -> {last['loss']:.3f}, E std {first['E_std']:.3f} -> "
        f"{last['E_std']:.3f}, E_pos {last['E_pos']:.3f} E_neg {last['E_neg']:.3f}, logits "
        f"[{last['logit_min']:.2f}, {last['logit_max']:.2f}], rank acc {last['rank_acc']:.3f}, in-batch acc "
        f"{last['inbatch_acc']:.3f} (train loss {t0['loss']:.3f} -> {t1['loss']:.3f})"
    )


@pytest.mark.slow
def test_default_head_learns(runs) -> None:
    trace = runs["default: softplus, tau 1.0"]
    _report("default: softplus, tau 1.0", trace)
    first, last = trace["held"][0], trace["held"][-1]
    m = NEG.count(SYN.layers)
    assert last["loss"] < 0.9 * first["loss"]
    assert last["E_pos"] < last["E_neg"]
    assert last["E_std"] > 3 * first["E_std"]
    assert last["rank_acc"] > 2 / (m + 1), "held-out ranking accuracy should be well above chance"
    assert last["inbatch_acc"] > 3 / HELD  # the held-out set is scored as one batch
    assert trace["skipped"][0]["n"] == 0


@pytest.mark.slow
def test_seed_head_is_boxed_in(runs) -> None:
    trace = runs["seed: sigmoid (0.1, 2.1), tau 0.5"]
    _report("seed: sigmoid (0.1, 2.1), tau 0.5", trace)
    for rec in trace["train"] + trace["held"]:
        assert 0.1 <= rec["E_min"] and rec["E_max"] <= 2.1
        assert rec["logit_max"] - rec["logit_min"] <= (2.1 - 0.1) / 0.5 + 1e-5
    default = runs["default: softplus, tau 1.0"]["held"]
    assert default[-1]["logit_max"] - default[-1]["logit_min"] > 4.0  # the default has already left that box
    # Same data, same optimiser, same steps: the seed head learns less (measured here: held-out loss
    # drop 1.31 vs 2.29, energy std x3.7 vs x14).
    seed = trace["held"]
    assert default[0]["loss"] - default[-1]["loss"] > 1.3 * (seed[0]["loss"] - seed[-1]["loss"])
    assert default[-1]["E_std"] / default[0]["E_std"] > 2 * seed[-1]["E_std"] / seed[0]["E_std"]
