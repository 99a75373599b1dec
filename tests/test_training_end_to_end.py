"""Synthetic task, tiny reference policy: BC -> feature cache -> energy head -> rerank at N = 64.

Asserted: every stage runs and hands the next what it needs (cache from the frozen policy, a
head that beats chance on held-out windows, a bundle the server loads), and the rerank numbers
are measured and printed. The issue's bar, reranked L1 below the base chunk's with a positive
share of the oracle gain, is NOT met by the current head (measured: share < 0 at every setting
tried: listwise losses, 2000 steps, 10x the policy's data for the head, a proximity prior, an
energy-weighted mean; the head's own best chunk is worse than the base and repeats part of
its mistake: scripts/rerank_diagnostics.py), so that assertion is an xfail that turns
into a failure the day it passes.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest

from energy_rerank.candidates import SamplerConfig
from energy_rerank.energy import EnergyModel
from energy_rerank.training.bc import BCConfig
from energy_rerank.training.cache import FeatureCache
from energy_rerank.training.config import TINY_REFERENCE_ENERGY, preset
from energy_rerank.training.losses import LossConfig, NegativesConfig
from energy_rerank.training.synthetic_pipeline import SyntheticPipelineConfig, run_synthetic_pipeline

SAMPLER = SamplerConfig(sigmas=(0.02, 0.05, 0.1), gripper_mode="flip")


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    base = preset("tiny-reference")
    energy = base.replace(
        steps=80,
        eval_every=80,
        checkpoint_every=0,
        tensorboard=False,
        sampler=SAMPLER,
        loss=LossConfig(listwise_weight=1.0, listwise_temperature=0.01, negatives=NegativesConfig(sampler_candidates=8)),
        data=dataclasses.replace(base.data, batch_size=16),
    )
    cfg = SyntheticPipelineConfig(
        train_episodes=12,
        heldout_episodes=4,
        bc=BCConfig(steps=80, batch_size=32, eval_every=80),
        energy=energy,
        sampler=SAMPLER,
        num_candidates=64,
    )
    out = run_synthetic_pipeline(tmp_path_factory.mktemp("e2e"), cfg)
    r = out["rerank"]
    print(
        f"\nrerank at N={r['num_candidates']} on {r['windows']} held-out windows: base L1 {r['base_l1']:.4f}, "
        f"reranked {r['reranked_l1']:.4f}, oracle {r['oracle_l1']:.4f}, share of oracle gain {r['share']:.3f}; "
        f"head held-out rank acc {out['energy_heldout']['rank_acc']:.3f}, seconds {out['seconds']}"
    )
    return out


@pytest.mark.slow
def test_pipeline_stages_connect(result) -> None:
    assert FeatureCache(Path(result["bundle"]).parent.parent / "features").meta["policy"] == "reference-tiny"
    head = EnergyModel.from_pretrained(result["bundle"])
    assert head.config == TINY_REFERENCE_ENERGY
    held = result["energy_heldout"]
    assert held["E_pos"] < held["E_neg"]
    m = NegativesConfig(sampler_candidates=8).count(3)  # 3 = layers of the tiny policy
    assert held["rank_acc"] > 2 / (m + 1)  # chance is 1 / (M + 1)
    r = result["rerank"]
    assert all(math.isfinite(r[k]) for k in ("base_l1", "reranked_l1", "oracle_l1"))
    assert r["oracle_l1"] < r["base_l1"]  # the candidates do contain better chunks
    assert result["energy_skipped_steps"] == 0


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason="the trained head does not yet beat the base chunk (see notes)")
def test_reranking_beats_the_base_chunk(result) -> None:
    r = result["rerank"]
    assert r["reranked_l1"] < r["base_l1"]
    assert r["share"] > 0
