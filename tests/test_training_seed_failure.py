"""The seed's failed energy training, reproduced next to our default on the same batches.

What the seed reported: the energy loss stayed flat; batch energies
clustered in a narrow band, the logits were almost equal and the gradient vanished. Its recipe:
sigmoid head with energies in (0.1, 2.1), InfoNCE at tau 0.5 over the in-batch B x B matrix only
(no explicit negatives), batches of similar actions, AdamW with weight decay 1e-4 and clip 0.5.

Both arms train the same tiny head for 800 steps on the same batches with the same optimiser.
A batch is the 24 expert chunks nearest to a random anchor: similar situations, as in a robot
data set where a batch shares one motion.
- seed arm: `sigmoid` head, tau 0.5, in-batch negatives only;
- default arm: EnergyConfig defaults (softplus) and LossConfig defaults (tau 1, explicit negatives).
Measured after training, on held-out data:
- each arm's own loss on held-out batches built the same way (the curve the seed watched), and
  the energy std inside those batches;
- the default LossConfig on a random held-out set for *both* arms, so E_pos, E_neg and ranking
  accuracy against the explicit negatives are comparable (chance = 1 / (M + 1) = 1/9).

Measured here (init seed 0; init seeds 1-5 in brackets, which set the thresholds):
- seed arm: held-out loss -1.5% [+0.3..-1.9%], train loss -0.4% [-0.2..-1.0%], energy std x1.8
  [x2.2..x5.0], rank acc 0.105 [0.05..0.10];
- default arm: held-out loss -10% [-7..-13%] on the similar batches and -31% [-13..-26%] on the
  random set, E_pos 7.2 < E_neg 10.2, energy std x15 [x12..x32], rank acc 0.44 [0.24..0.40].
The seed arm's energy std is not frozen: AdamW turns its vanishing, noisy gradient into full-size
steps, so energies drift, yet each context's in-batch softmax stays near uniform (loss ~ log 24).

Which ingredients the flat loss needed (measured on init seeds 0 and 1, 800 steps):
- in-batch negatives only *and* similar batches. Softplus at tau 1 with in-batch negatives only
  is as flat on these batches (-1.5%, -0.7%; rank acc 0.10, 0.07), though its energies spread
  (x9, x10). The seed recipe on random batches learns (train loss -39%, rank acc 0.55).
- sigmoid + tau 0.5 alone, everything else as in the default arm, does NOT reproduce it: the loss
  falls (-6.2%, -5.3% on the similar batches; -9%, -8% on the random set, about a third of the
  default's drop there) and rank acc reaches 0.26, 0.29. What the sigmoid does cap is the energy
  spread (x2.7, x5.8 against the default's x15, x32).
- not the seed's LR cut: the seed arm is flat at lr 2e-4 (-2.5%), 1e-3 and 2e-3 (-0.1%). The LR
  matters for the default instead: on these hard batches it learns slowly at 2e-4 (-4.6%, rank
  acc 0.22) and stalls at 2e-3 (-3.5%, rank acc 0.19), so both arms run at 1e-3.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from energy_rerank.config import EnergyConfig
from energy_rerank.energy import EnergyModel
from energy_rerank.training.cache import FeatureBatch
from energy_rerank.training.losses import LossConfig, NegativesConfig, energy_loss
from energy_rerank.training.optim import GuardedOptimizer, OptimConfig
from energy_rerank.training.synthetic_features import SyntheticFeatureConfig, make_synthetic_features

SYN = SyntheticFeatureConfig(latent_dim=3, tokens=8, min_valid=4)
HEAD = dict(context_dim=SYN.context_dim, action_dim=SYN.action_dim, chunk_len=SYN.chunk_len, hidden=32, heads=2, pe_dropout=0.0)
INBATCH_ONLY = NegativesConfig(layer=False, noise_sigmas=(), shuffled=0, other_samples=0)
STEPS, BATCH, HELD_BATCHES, HELD = 800, 24, 8, 256
# The seed's post-mortem optimiser (weight decay 1e-4, clip 0.5). The skip guards are loosened so
# a skipped step can never be what keeps a loss flat; both arms assert none was skipped.
OPTIM = OptimConfig(lr=1e-3, weight_decay=1e-4, clip_grad_norm=0.5, warmup_steps=20, skip_grad_norm=1e3, skip_grad_ratio=20)
DEFAULT_LOSS = LossConfig()
CHANCE = 1 / (DEFAULT_LOSS.negatives.count(SYN.layers) + 1)

SEED = "seed: sigmoid (0.1, 2.1), tau 0.5, in-batch only"
DEFAULT = "default: softplus, tau 1.0, explicit negatives"
ARMS = {
    SEED: (EnergyConfig(**HEAD, activation="sigmoid"), LossConfig(tau=0.5, negatives=INBATCH_ONLY)),
    DEFAULT: (EnergyConfig(**HEAD), DEFAULT_LOSS),
}

Metrics = dict[str, float]


def _similar_batches(pool: FeatureBatch, gen: torch.Generator) -> Iterator[torch.Tensor]:
    """Endless batches of the BATCH expert chunks nearest to a random anchor."""
    flat = pool.expert.flatten(1)
    while True:
        anchor = flat[int(torch.randint(0, len(pool), (1,), generator=gen))]
        yield (flat - anchor).pow(2).sum(1).topk(BATCH, largest=False).indices


def _evaluate(model: EnergyModel, loss: LossConfig, pool: FeatureBatch, held: FeatureBatch) -> dict[str, Metrics]:
    model.eval()
    # Separate generators: the held-out batches are the same before and after training and for
    # both arms, whatever random numbers an arm's negatives consume.
    batches = _similar_batches(pool, torch.Generator().manual_seed(7))
    gen = torch.Generator().manual_seed(8)
    with torch.no_grad():
        outs = [energy_loss(model, pool.select(next(batches)), loss, 0, gen).metrics for _ in range(HELD_BATCHES)]
        ranking = energy_loss(model, held, DEFAULT_LOSS, 0, torch.Generator().manual_seed(5)).metrics
    model.train()
    return {
        "own": {k: float(sum(o[k] for o in outs)) / len(outs) for k in outs[0]},
        "ranking": {k: float(v) for k, v in ranking.items()},
    }


def _run(energy: EnergyConfig, loss: LossConfig, init_seed: int = 0) -> dict[str, dict[str, Metrics]]:
    train = make_synthetic_features(4096, SYN, seed=0)
    held_pool = make_synthetic_features(2048, SYN, seed=1)
    held = make_synthetic_features(HELD, SYN, seed=2)
    torch.manual_seed(init_seed)
    model = EnergyModel(energy)
    opt = GuardedOptimizer(model.parameters(), OPTIM)
    gen = torch.Generator().manual_seed(init_seed)
    batches = _similar_batches(train, torch.Generator().manual_seed(init_seed))  # identical for both arms
    before = _evaluate(model, loss, held_pool, held)
    train_loss = []
    for step in range(STEPS):
        out = energy_loss(model, train.select(next(batches)), loss, step, gen)
        opt.step(out.loss)
        train_loss.append(float(out.loss.detach()))
    k = STEPS // 10
    return {
        "before": before,
        "after": _evaluate(model, loss, held_pool, held),
        "train": {"first": sum(train_loss[:k]) / k, "last": sum(train_loss[-k:]) / k, "skipped": float(opt.skipped_steps)},
    }


@pytest.fixture(scope="module")
def runs() -> dict[str, dict[str, dict[str, Metrics]]]:
    return {name: _run(energy, loss) for name, (energy, loss) in ARMS.items()}


def _report(name: str, trace) -> None:
    own0, own1 = trace["before"]["own"], trace["after"]["own"]
    r0, r1 = trace["before"]["ranking"], trace["after"]["ranking"]
    t = trace["train"]
    print(
        f"\n{name}: held-out loss (similar batches) {own0['loss']:.3f} -> {own1['loss']:.3f} "
        f"({own1['loss'] / own0['loss'] - 1:+.1%}), E std {own0['E_std']:.3f} -> {own1['E_std']:.3f} "
        f"(x{own1['E_std'] / own0['E_std']:.2f}), logits [{own1['logit_min']:.2f}, {own1['logit_max']:.2f}]; "
        f"default loss on random held-out {r0['loss']:.3f} -> {r1['loss']:.3f} ({r1['loss'] / r0['loss'] - 1:+.1%}), "
        f"E_pos {r1['E_pos']:.3f} E_neg {r1['E_neg']:.3f}, rank acc {r0['rank_acc']:.3f} -> {r1['rank_acc']:.3f} "
        f"(chance {CHANCE:.3f}) (train loss {t['first']:.3f} -> {t['last']:.3f}, skipped {t['skipped']:.0f})"
    )


@pytest.mark.slow
def test_default_head_learns_on_similar_batches(runs) -> None:
    trace = runs[DEFAULT]
    _report(DEFAULT, trace)
    own0, own1 = trace["before"]["own"], trace["after"]["own"]
    r0, r1 = trace["before"]["ranking"], trace["after"]["ranking"]
    # Thresholds sit below the worst of init seeds 0-5 (module docstring): -13% and -7%.
    assert r1["loss"] < 0.9 * r0["loss"], "the default loss should fall on held-out data"
    assert own1["loss"] < 0.96 * own0["loss"]
    assert r1["E_pos"] < r1["E_neg"]
    assert r1["rank_acc"] > 2 * CHANCE, "held-out ranking accuracy should be well above chance"  # worst 0.24
    assert own1["E_std"] > 8 * own0["E_std"]  # worst x12
    assert trace["train"]["skipped"] == 0


@pytest.mark.slow
def test_seed_recipe_stays_flat(runs) -> None:
    trace = runs[SEED]
    _report(SEED, trace)
    own0, own1 = trace["before"]["own"], trace["after"]["own"]
    r1 = trace["after"]["ranking"]
    for rec in (own0, own1):
        assert 0.1 <= rec["E_min"] and rec["E_max"] <= 2.1  # the sigmoid box
    # Worst of init seeds 0-5: -1.9% (held-out) and -1.0% (train), against -7% and -9% for the default.
    assert abs(own1["loss"] / own0["loss"] - 1) < 0.05, "the seed's loss should barely move"
    assert abs(trace["train"]["last"] / trace["train"]["first"] - 1) < 0.05
    # Not frozen (worst x5.0; AdamW rescales the tiny gradient), but far below the default's
    # growth on the same batches (ratio 4.4 at worst).
    assert own1["E_std"] < 6 * own0["E_std"]
    default = runs[DEFAULT]["after"]["own"]["E_std"] / runs[DEFAULT]["before"]["own"]["E_std"]
    assert default > 3 * own1["E_std"] / own0["E_std"]
    assert r1["rank_acc"] < 1.5 * CHANCE, "the seed head should rank no better than chance"  # worst 0.11
    assert trace["train"]["skipped"] == 0
