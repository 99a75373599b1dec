"""Energy losses: the shared-context B x B matrix equals the seed's copy, costs O(B) in the context
projection (the seed's copy costs O(B^2)), negatives are what they claim, the hinge has the right sign."""

from __future__ import annotations

import pytest
import torch

from energy_rerank.config import EnergyConfig
from energy_rerank.energy import EnergyModel
from energy_rerank.training.cache import FeatureBatch
from energy_rerank.training.losses import (
    LossConfig,
    NegativesConfig,
    build_negatives,
    energy_loss,
    seed_copy_energy_matrix,
)
from energy_rerank.training.synthetic_features import SyntheticFeatureConfig, make_synthetic_features

SYN = SyntheticFeatureConfig()
CFG = EnergyConfig(context_dim=SYN.context_dim, action_dim=SYN.action_dim, chunk_len=SYN.chunk_len, hidden=32, heads=2)


def _model() -> EnergyModel:
    torch.manual_seed(0)
    return EnergyModel(CFG).eval()


def test_shared_context_matrix_equals_seed_copy() -> None:
    m, b = _model(), make_synthetic_features(6, SYN, seed=0)
    with torch.no_grad():
        shared = m.energy_matrix(m.encode_context(b.context, b.valid), b.expert)
        seed = seed_copy_energy_matrix(m, b.context, b.valid, b.expert)
    torch.testing.assert_close(shared, seed, rtol=1e-5, atol=1e-5)


def _context_elements(model: EnergyModel, fn) -> int:
    """Elements of every tensor that enters the context projection (state_linear) during fn()."""
    seen = []
    handle = model.state_linear.register_forward_pre_hook(lambda _m, args: seen.append(args[0].numel()))
    try:
        fn()
    finally:
        handle.remove()
    return sum(seen)


def test_context_cost_of_the_loss_is_linear_in_batch_and_the_seed_copy_quadratic() -> None:
    m = _model().train()
    shared, seed = {}, {}
    s, d = SYN.tokens, SYN.context_dim
    for bsz in (2, 4, 8, 16):
        b = make_synthetic_features(bsz, SYN, seed=bsz)
        gen = torch.Generator().manual_seed(0)
        shared[bsz] = _context_elements(m, lambda b=b, gen=gen: energy_loss(m, b, LossConfig(), 0, gen).loss.backward())
        seed[bsz] = _context_elements(m, lambda b=b: seed_copy_energy_matrix(m, b.context, b.valid, b.expert).sum())
    print("context elements through the projection, B -> (shared loss, seed copy):",
          {k: (shared[k], seed[k]) for k in shared})
    for bsz in shared:
        assert shared[bsz] == bsz * s * d  # each context projected exactly once, whatever the negatives
        assert seed[bsz] == bsz * bsz * s * d
    assert seed[16] / shared[16] == 16


def test_negatives_layout_and_counts() -> None:
    b = make_synthetic_features(5, SYN, seed=1)
    cfg = NegativesConfig(layer=True, noise_sigmas=(0.1, 0.5), base_noise_sigmas=(0.2,), shuffled=1, other_samples=2)
    neg = build_negatives(b, cfg, torch.Generator().manual_seed(0))
    assert neg.shape == (5, cfg.count(SYN.layers), SYN.chunk_len, SYN.action_dim)
    L = SYN.layers - 1
    torch.testing.assert_close(neg[:, :L], b.layer_actions[:, :-1])  # layer chunks except the last
    for j, sigma in enumerate((0.1, 0.5)):
        dev = (neg[:, L + j] - b.expert).std()
        assert 0.6 * sigma < dev < 1.4 * sigma
    shuffled = neg[:, L + 3]
    torch.testing.assert_close(shuffled.sort(1).values, b.expert.sort(1).values)  # same steps, new order
    others = neg[:, L + 4 :]
    for i in range(5):
        for k in range(2):
            assert not torch.equal(others[i, k], b.expert[i])  # never the sample's own chunk
            assert any(torch.equal(others[i, k], b.expert[j]) for j in range(5))


def test_margin_term_rewards_low_positive_energy() -> None:
    m = _model()  # eval mode: no dropout, so the two evaluations see the same function
    b = make_synthetic_features(8, SYN, seed=2)
    cfg = LossConfig(inbatch_weight=0, negatives_weight=0, margin_weight=1.0, margin=10.0)
    out = energy_loss(m, b, cfg, 0, torch.Generator().manual_seed(0))
    out.loss.backward()
    with torch.no_grad():
        for p in m.parameters():
            p -= 1e-2 * p.grad
        out2 = energy_loss(m, b, cfg, 0, torch.Generator().manual_seed(0))
    # relu(margin + E_pos - E_neg): descending it must lower E_pos relative to the same negatives.
    assert float(out2.metrics["loss_margin"]) < float(out.metrics["loss_margin"])
    torch.testing.assert_close(out.loss, out.metrics["loss_margin"])


def test_mixed_schedule_ramps_from_margin_to_infonce() -> None:
    m = _model()
    b = make_synthetic_features(8, SYN, seed=3)
    cfg = LossConfig(schedule="mixed", mixed_ramp_steps=100)
    start = energy_loss(m, b, cfg, 0, torch.Generator().manual_seed(0))
    end = energy_loss(m, b, cfg, 100, torch.Generator().manual_seed(0))
    torch.testing.assert_close(start.loss, start.metrics["loss_margin"])
    torch.testing.assert_close(end.loss, end.metrics["loss_inbatch"] + end.metrics["loss_negatives"])


def test_adaptive_tau_and_bad_inputs() -> None:
    m = _model()
    b = make_synthetic_features(8, SYN, seed=4)
    out = energy_loss(m, b, LossConfig(tau=1e-3, adaptive_tau=True), 0, torch.Generator().manual_seed(0))
    assert float(out.metrics["tau"]) == pytest.approx(2 * float(out.metrics["E_std"]), rel=1e-4)
    with pytest.raises(ValueError, match="tau"):
        LossConfig(tau=0.0)
    with pytest.raises(ValueError, match="valid"):
        FeatureBatch(b.context, b.valid.float(), b.layer_actions, b.base, b.expert)  # type: ignore[arg-type]
