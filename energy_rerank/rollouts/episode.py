"""One recorded episode in memory, independent of the file format it came from.

LIBERO's robomimic-style HDF5 and openpi's LeRobot parquet both reduce to this: per-step
observation arrays keyed by name, the actions taken, and (HDF5 only) the simulator states
that let an episode be replayed exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


class RolloutFormatError(ValueError):
    """A rollout file lacks a required key or holds arrays of inconsistent shapes."""


@dataclass
class Episode:
    """A single demonstration or rollout of T control steps."""

    actions: np.ndarray  # [T, A] float32, actions in robot units (LIBERO: 7, in [-1, 1])
    obs: dict[str, np.ndarray] = field(default_factory=dict)  # key -> [T, ...] per-step observation
    states: np.ndarray | None = None  # [T, S] float64 flattened MuJoCo states (replayable), if recorded
    rewards: np.ndarray | None = None  # [T] float32 per-step reward
    dones: np.ndarray | None = None  # [T] uint8, 1 on the final (successful) step
    instruction: str = ""  # language instruction of the task
    task: str = ""  # task identifier, e.g. "libero_object/3" (used to group reports)
    name: str = ""  # episode name inside its file, e.g. "demo_0"

    def __post_init__(self) -> None:
        self.validate()

    @property
    def length(self) -> int:
        return int(self.actions.shape[0])

    def validate(self) -> None:
        """Every per-step array must have T rows; actions must be [T, A]."""
        if self.actions.ndim != 2:
            raise RolloutFormatError(
                f"{self.name or 'episode'}: actions must be [T, A], got {self.actions.shape}"
            )
        t = self.length
        per_step: dict[str, np.ndarray | None] = {f"obs/{k}": v for k, v in self.obs.items()}
        per_step.update({"states": self.states, "rewards": self.rewards, "dones": self.dones})
        for key, arr in per_step.items():
            if arr is not None and arr.shape[0] != t:
                raise RolloutFormatError(
                    f"{self.name or 'episode'}: {key} has {arr.shape[0]} steps, actions have {t} "
                    f"(expected {key} of shape [{t}, ...], got {arr.shape})"
                )
