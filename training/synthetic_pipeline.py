"""End to end on the synthetic task: BC policy -> feature cache -> energy head -> rerank gain.

    result = run_synthetic_pipeline(workdir, SyntheticPipelineConfig())
    result["rerank"]  # base / reranked / oracle held-out L1 at N candidates, and the share recovered

Used by tests/test_training_end_to_end.py (small settings) and scripts/train_energy_synthetic.py
(larger ones). Episodes of the held-out split come from another seed, so no window is shared.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from energy_rerank.candidates import CandidateSampler, SamplerConfig
from energy_rerank.policy.reference import ReferenceConfig, ReferenceVLA
from energy_rerank.synthetic import SyntheticConfig, SyntheticTask
from energy_rerank.training.bc import BCConfig, train_bc
from energy_rerank.training.cache import FeatureCache
from energy_rerank.training.config import TrainConfig, preset
from energy_rerank.training.energy_trainer import EnergyTrainer
from energy_rerank.training.policy_data import PolicyWindows, cache_policy_features
from energy_rerank.training.rerank_eval import rerank_gain


@dataclass(frozen=True)
class SyntheticPipelineConfig:
    """Sizes of the end-to-end run (defaults: about a minute on a loaded 2-core CPU)."""

    task: SyntheticConfig = field(default_factory=SyntheticConfig)  # the synthetic task
    train_episodes: int = 60  # episodes for BC (and the feature cache unless energy_episodes is set)
    # Episodes the head's feature cache is built from (None: the policy's own). More than the
    # policy saw models a head trained on data the frozen policy never had (extra demonstrations).
    energy_episodes: int | None = None
    heldout_episodes: int = 12  # episodes (another seed) for the rerank evaluation
    bc: BCConfig = field(default_factory=lambda: BCConfig(steps=300, batch_size=64, eval_every=300))  # policy
    energy: TrainConfig = field(default_factory=lambda: preset("tiny-reference"))  # head training
    sampler: SamplerConfig = field(default_factory=SamplerConfig)  # inference candidates
    num_candidates: int = 64  # N for the rerank evaluation
    seed: int = 0  # torch seed for the policy's init
    context_layer: int = -1  # policy hidden states the head reads (ReferenceConfig.context_layer)


def run_synthetic_pipeline(workdir: str | Path, cfg: SyntheticPipelineConfig) -> dict[str, Any]:
    workdir = Path(workdir)
    t0 = time.perf_counter()
    task = SyntheticTask(cfg.task)
    train = task.windows(task.episodes(cfg.train_episodes, seed=1))
    held = task.windows(task.episodes(cfg.heldout_episodes, seed=2))
    torch.manual_seed(cfg.seed)
    policy = ReferenceVLA(
        ReferenceConfig.preset(
            "tiny", lowdim_dim=task.lowdim_dim, chunk_len=task.chunk_len, context_layer=cfg.context_layer
        )
    )
    bc = train_bc(policy, train, held, cfg.bc, out=workdir / "policy", progress=False)
    policy.eval()
    t1 = time.perf_counter()
    head_data = (
        train if cfg.energy_episodes is None else task.windows(task.episodes(cfg.energy_episodes, seed=1))
    )
    cache_dir = cache_policy_features(policy, head_data, workdir / "features")
    t2 = time.perf_counter()
    energy_cfg = cfg.energy.replace(data=dataclasses.replace(cfg.energy.data, cache_dir=str(cache_dir)))
    trainer = EnergyTrainer(
        energy_cfg, workdir / "energy", features=FeatureCache(cache_dir), stats=policy.stats
    )
    summary = trainer.fit()
    t3 = time.perf_counter()
    sampler = CandidateSampler.for_policy(policy, cfg.sampler)
    result = rerank_gain(
        policy, trainer.model, PolicyWindows(policy, held), sampler, cfg.num_candidates, episode=held.episode
    )
    return {
        "bc_val_l1": bc.final_val_l1,
        "energy_heldout": summary["heldout"],
        "energy_skipped_steps": summary["skipped_steps"],
        "rerank": result.to_dict(),
        "bundle": str(workdir / "energy"),
        "seconds": {"bc": t1 - t0, "cache": t2 - t1, "energy": t3 - t2, "eval": time.perf_counter() - t3},
        "policy": policy,
        "model": trainer.model,
    }
