"""Windows: (observation at t, expert chunk a[t:t+H]) pairs, the unit of policy training data.

Every data source (the synthetic task, LIBERO HDF5, LeRobot parquet) reduces to this, so
behaviour cloning and the energy feature cache read one type. Everything is in robot units;
`norm_stats` gives the statistics a policy normalises with.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from energy_rerank.normalize import NormMode, NormStats
from energy_rerank.policy.base import Observation


@dataclass
class Windows:
    """N observation windows and their expert chunks."""

    observations: list[Observation]  # N observations, robot units
    chunks: np.ndarray  # [N, H, A] float32 expert chunks, robot units
    episode: np.ndarray  # [N] int64 episode index of each window (split by episode, not by window)
    step: np.ndarray  # [N] int64 time step of each window inside its episode

    def __post_init__(self) -> None:
        n = len(self.observations)
        if self.chunks.ndim != 3 or self.chunks.shape[0] != n:
            raise ValueError(f"chunks must be [{n}, H, A], got {self.chunks.shape}")
        for name in ("episode", "step"):
            if getattr(self, name).shape != (n,):
                raise ValueError(f"{name} must be [{n}], got {getattr(self, name).shape}")

    def __len__(self) -> int:
        return len(self.observations)

    @property
    def chunk_len(self) -> int:
        return int(self.chunks.shape[1])

    @property
    def action_dim(self) -> int:
        return int(self.chunks.shape[2])

    def subset(self, indices: Sequence[int] | np.ndarray) -> Windows:
        idx = np.asarray(indices, dtype=np.int64)
        return Windows(
            observations=[self.observations[i] for i in idx],
            chunks=self.chunks[idx],
            episode=self.episode[idx],
            step=self.step[idx],
        )

    def state_vectors(self, lowdim: bool, state: bool) -> np.ndarray | None:
        """[N, lowdim_dim + state_dim]: the vector a policy reads (lowdim first), or None if neither."""
        if not (lowdim or state):
            return None
        return np.stack([observation_vector(o, lowdim, state, i) for i, o in enumerate(self.observations)])

    def norm_stats(
        self,
        lowdim: bool,
        state: bool,
        binary_dims: tuple[int, ...] = (),
        action_mode: NormMode = "bounds",
    ) -> NormStats:
        """Action statistics from the chunks, state statistics from the vectors the policy reads."""
        return NormStats.from_data(
            self.chunks.reshape(-1, self.action_dim),
            state=self.state_vectors(lowdim, state),
            binary_dims=binary_dims,
            action_mode=action_mode,
        )


def observation_vector(obs: Observation, lowdim: bool, state: bool, index: int = 0) -> np.ndarray:
    """The float32 vector [lowdim..., state...] a policy reads from one observation."""
    parts = []
    for name, wanted in (("lowdim", lowdim), ("state", state)):
        if not wanted:
            continue
        value = getattr(obs, name)
        if value is None:
            raise ValueError(f"observation {index}: field `{name}` is required by this policy but is empty")
        parts.append(np.asarray(value, dtype=np.float32).reshape(-1))
    return np.concatenate(parts) if parts else np.zeros(0, np.float32)
