"""The Proposer protocol: what every policy gives the reranker.

A Proposer turns observations into a context for the energy head and candidate chunks:
its hidden states (context), which context tokens are valid, and the action head applied to
the action-token hidden states of every layer ("layer actions"; a policy may have none).
A sampling policy (flow matching, diffusion: a `DrawingProposer`) also draws chunks itself:
`draws`, seeded per observation, draw 0 being the chunk the policy would act on alone.
All action tensors here are in the policy's *normalised* action space; `NormStats` maps them
to robot units.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np
import torch

from energy_rerank.normalize import NormStats


@dataclass
class Observation:
    """One robot observation, in robot units. Any field a policy does not use may be empty."""

    images: dict[str, np.ndarray] = field(default_factory=dict)  # camera name -> uint8 [h, w, 3]
    state: np.ndarray | None = None  # proprio state [P] float32
    lowdim: np.ndarray | None = None  # low-dim scene state (object poses + proprio) [L] float32
    instruction: str = ""  # language instruction


@dataclass(frozen=True)
class PolicyDescription:
    """What a policy expects and produces; served by GetModelInfo."""

    name: str  # human-readable policy name
    hidden_size: int  # D: width of the context hidden states
    chunk_len: int  # H: action steps per chunk
    action_dim: int  # A: action dims per step (normalised space)
    num_layers: int  # L: number of layer-action chunks (one per transformer layer)
    cameras: tuple[str, ...] = ()  # camera names the policy reads, in order
    image_size: tuple[int, int] | None = None  # (height, width) images are resized to
    state_dim: int = 0  # proprio dims read (0 = not used)
    lowdim_dim: int = 0  # low-dim scene-state dims read (0 = not used)
    gripper_dims: tuple[int, ...] = ()  # action dims that are binary (open/close)


@dataclass
class Proposals:
    """A policy's output for a batch of B observations."""

    context: torch.Tensor  # [B, S, D] last-layer hidden states
    valid: torch.Tensor  # [B, S] bool, True = the energy head may attend to this token
    layer_actions: torch.Tensor  # [B, L, H, A] one chunk per layer (normalised; L = 0: none)
    base: torch.Tensor  # [B, H, A] the policy's own chunk = last layer's, or draw 0 (normalised)
    draws: torch.Tensor | None = None  # [B, M, H, A] a sampling policy's own draws, draws[:, 0] = base

    def __post_init__(self) -> None:
        b, s, _ = self.context.shape
        if self.valid.shape != (b, s) or self.valid.dtype != torch.bool:
            raise ValueError(f"valid must be bool [{b}, {s}], got {self.valid.dtype} {tuple(self.valid.shape)}")
        if self.layer_actions.dim() != 4 or self.layer_actions.shape[0] != b:
            raise ValueError(f"layer_actions must be [{b}, L, H, A], got {tuple(self.layer_actions.shape)}")
        if self.base.shape != (b, *self.layer_actions.shape[2:]):
            raise ValueError(f"base must be [{b}, H, A], got {tuple(self.base.shape)}")
        d = self.draws
        if d is not None and (d.dim() != 4 or d.shape[1] < 1 or (d.shape[0], *d.shape[2:]) != self.base.shape):
            raise ValueError(f"draws must be [{b}, M >= 1, H, A] like base, got {tuple(d.shape)}")

    @property
    def batch(self) -> int:
        return int(self.context.shape[0])


@runtime_checkable
class Proposer(Protocol):
    """Anything that proposes chunks for observations: the reference VLA, an HF adapter, ..."""

    description: PolicyDescription
    stats: NormStats | None  # action/state statistics (None = actions already normalised)

    def propose(self, observations: Sequence[Observation]) -> Proposals: ...


@runtime_checkable
class DrawingProposer(Proposer, Protocol):
    """A Proposer whose policy samples its chunk (pi0's flow matching): it draws M chunks per
    observation from one pass over the observation, draw j of observation i depending only on
    (observation i, seeds[i], j), so the first k of M draws are the k draws (prefix-stable).
    Draw 0 is the chunk the policy would act on alone with that seed."""

    def propose_draws(
        self, observations: Sequence[Observation], num_draws: int, seeds: Sequence[int]
    ) -> Proposals: ...


def propose_with_draws(
    proposer: Proposer, observations: Sequence[Observation], num_draws: int, seeds: Sequence[int]
) -> Proposals:
    """What candidates are built from: a sampling policy's first `num_draws` draws per observation,
    seeded by seeds[i]; any other policy's plain proposals (num_draws and seeds unused).
    The one call the Reranker, `eval offline` and training's samplers share."""
    if isinstance(proposer, DrawingProposer):
        return proposer.propose_draws(observations, max(1, int(num_draws)), seeds)
    return proposer.propose(observations)
