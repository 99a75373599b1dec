"""The Proposer protocol: what every policy gives the reranker.

A Proposer turns observations into a context for the energy head and candidate chunks:
its last-layer hidden states (context), which context tokens are valid, and the action head
applied to the action-token hidden states of every layer ("layer actions").
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
    layer_actions: torch.Tensor  # [B, L, H, A] one chunk per layer (normalised)
    base: torch.Tensor  # [B, H, A] the policy's own chunk = last layer's (normalised)

    def __post_init__(self) -> None:
        b, s, _ = self.context.shape
        if self.valid.shape != (b, s) or self.valid.dtype != torch.bool:
            raise ValueError(f"valid must be bool [{b}, {s}], got {self.valid.dtype} {tuple(self.valid.shape)}")
        if self.layer_actions.dim() != 4 or self.layer_actions.shape[0] != b:
            raise ValueError(f"layer_actions must be [{b}, L, H, A], got {tuple(self.layer_actions.shape)}")
        if self.base.shape != (b, *self.layer_actions.shape[2:]):
            raise ValueError(f"base must be [{b}, H, A], got {tuple(self.base.shape)}")

    @property
    def batch(self) -> int:
        return int(self.context.shape[0])


@runtime_checkable
class Proposer(Protocol):
    """Anything that proposes chunks for observations: the reference VLA, an HF adapter, ..."""

    description: PolicyDescription
    stats: NormStats | None  # action/state statistics (None = actions already normalised)

    def propose(self, observations: Sequence[Observation]) -> Proposals: ...
