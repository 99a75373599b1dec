"""Typed, frozen training configs and named presets.

`TrainConfig` nests the energy architecture (core `EnergyConfig`), the loss, the optimiser
guards and the run's schedule. It round-trips through JSON (`config_to_dict` /
`config_from_dict` from the core), and is written next to every checkpoint and bundle.

Presets:
- `debug`: synthetic features, a tiny head, 40 steps: the whole pipeline in seconds (tests,
  `energy-rerank train --debug`, the torchrun smoke test);
- `tiny-reference`: the energy head sized for the tiny reference policy (context width 64, A = 7,
  H = 8); the lead builds the server's embedded default bundle from `TINY_REFERENCE_ENERGY`;
- `default`: the seed architecture (D_h = 4096, hidden 512, 8 heads) for real VLAs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from energy_rerank.candidates import SamplerConfig
from energy_rerank.config import EnergyConfig
from energy_rerank.training.losses import LossConfig
from energy_rerank.training.optim import OptimConfig
from energy_rerank.training.synthetic_features import SyntheticFeatureConfig

# The seed's guards, except the absolute grad-norm skip: a healthy head's grad norm grows past the
# seed's 10 (measured: ~20 on the tiny reference head) and every step would be refused, so the
# absolute ceiling is raised and spikes are judged against the running mean instead.
ENERGY_OPTIM = OptimConfig(lr=1e-4, weight_decay=1e-4, clip_grad_norm=0.5, skip_grad_norm=1e3, skip_grad_ratio=20.0)

TrainMode = Literal["energy-only", "joint", "alternating", "monitor-only"]
MODES: tuple[str, ...] = ("energy-only", "joint", "alternating", "monitor-only")


@dataclass(frozen=True)
class DataConfig:
    """Where the features come from and how they are batched."""

    cache_dir: str = ""  # feature cache directory; "" = synthetic features (see `synthetic`)
    batch_size: int = 32  # samples per step per rank (the in-batch matrix is batch_size x batch_size)
    holdout_fraction: float = 0.1  # share of samples kept out of training for evaluation
    holdout_max: int = 256  # at most this many held-out samples are evaluated each time
    synthetic_samples: int = 2048  # samples generated when cache_dir is ""
    synthetic: SyntheticFeatureConfig = field(default_factory=SyntheticFeatureConfig)  # their shape


@dataclass(frozen=True)
class TrainConfig:
    """One training run."""

    mode: TrainMode = "energy-only"  # energy-only | joint | alternating | monitor-only (energy_trainer.py)
    steps: int = 5000  # optimiser steps (energy steps in energy-only mode)
    seed: int = 0  # seeds init, data order, negatives and dropout
    device: str = "cpu"  # torch device; under torchrun each rank uses its local GPU when "cuda"
    energy: EnergyConfig = field(default_factory=EnergyConfig)  # head architecture
    loss: LossConfig = field(default_factory=LossConfig)  # energy loss terms
    optim: OptimConfig = field(default_factory=lambda: ENERGY_OPTIM)  # energy optimiser and guards
    policy_optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-4, clip_grad_norm=1.0))  # joint modes
    data: DataConfig = field(default_factory=DataConfig)  # features and batching
    sampler: SamplerConfig = field(default_factory=SamplerConfig)  # inference candidates, for sampler negatives
    energy_warmup_steps: int = 0  # joint modes: policy-only steps before the energy head starts training
    alternate_every: int = 10  # alternating mode: steps per phase (policy phase, then energy phase)
    log_every: int = 50  # console line + TensorBoard every this many steps
    eval_every: int = 200  # held-out metrics every this many steps (and at the end)
    checkpoint_every: int = 500  # train-state checkpoint every this many steps (0 = only at the end)
    keep_checkpoints: int = 3  # newest checkpoints kept on disk
    tensorboard: bool = True  # write TensorBoard event files under <out>/tb

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.steps < 0 or self.data.batch_size < 2:
            raise ValueError("steps must be >= 0 and data.batch_size >= 2 (the in-batch loss needs pairs)")
        if self.alternate_every < 1 or self.log_every < 1 or self.eval_every < 1:
            raise ValueError("alternate_every, log_every and eval_every must be >= 1")

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)


# Energy head for the tiny reference policy (energy_rerank.policy.reference SIZES["tiny"]:
# hidden_size 64, chunk 8, 7-D actions). Small enough to train on a CPU in a minute.
TINY_REFERENCE_ENERGY = EnergyConfig(
    context_dim=64, action_dim=7, chunk_len=8, hidden=64, heads=4, pe_dropout=0.0
)

_DEBUG_SYNTH = SyntheticFeatureConfig()

PRESETS: dict[str, TrainConfig] = {
    "debug": TrainConfig(
        steps=40,
        energy=EnergyConfig(
            context_dim=_DEBUG_SYNTH.context_dim,
            action_dim=_DEBUG_SYNTH.action_dim,
            chunk_len=_DEBUG_SYNTH.chunk_len,
            hidden=32,
            heads=2,
            pe_dropout=0.0,
        ),
        optim=dataclasses.replace(ENERGY_OPTIM, lr=1e-3, warmup_steps=10),
        data=DataConfig(batch_size=16, synthetic_samples=512, holdout_max=64, synthetic=_DEBUG_SYNTH),
        log_every=10,
        eval_every=20,
        checkpoint_every=20,
        tensorboard=False,
    ),
    "tiny-reference": TrainConfig(
        steps=600,
        energy=TINY_REFERENCE_ENERGY,
        optim=dataclasses.replace(ENERGY_OPTIM, lr=1e-3, warmup_steps=50),
        data=DataConfig(batch_size=32),
        log_every=50,
        eval_every=200,
        checkpoint_every=200,
    ),
    "default": TrainConfig(),
}


def preset(name: str) -> TrainConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}")
    return PRESETS[name]
