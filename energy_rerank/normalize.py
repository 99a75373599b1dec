"""Action and state statistics: quantile bounds and mean/std, saved as JSON beside the weights.

Candidates are built and scored in *normalised* action space (unit-free sigmas make sense
there); the robot gets chunks back in its own units, clipped to the recorded bounds.

Modes:
- "bounds": q01..q99 -> [-1, 1] (OpenVLA's BOUNDS_Q99), the default for actions;
- "meanstd": (x - mean) / std (openpi's default for state);
- "identity": no change (data already in [-1, 1], e.g. LIBERO actions).
Dimensions listed in `binary_dims` (the gripper) are never rescaled.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

NormMode = Literal["bounds", "meanstd", "identity"]
STATS_FILE = "stats.json"


@dataclass(frozen=True)
class ArrayStats:
    """Per-dimension statistics of one array field (actions or state)."""

    mean: tuple[float, ...]  # per-dim mean
    std: tuple[float, ...]  # per-dim standard deviation (floored at 1e-6 when used)
    q01: tuple[float, ...]  # 1st percentile: maps to -1 in "bounds" mode
    q99: tuple[float, ...]  # 99th percentile: maps to +1 in "bounds" mode
    min: tuple[float, ...]  # observed minimum: lower clip bound in robot units
    max: tuple[float, ...]  # observed maximum: upper clip bound in robot units

    @classmethod
    def from_array(cls, x: np.ndarray | torch.Tensor) -> ArrayStats:
        """x [..., D] -> statistics over every leading dim."""
        arr = np.asarray(x.detach().cpu() if isinstance(x, torch.Tensor) else x, dtype=np.float64)
        arr = arr.reshape(-1, arr.shape[-1])
        if arr.shape[0] == 0:
            raise ValueError("cannot compute statistics of an empty array")
        if not np.isfinite(arr).all():
            raise ValueError("statistics input contains NaN or Inf")

        def t(v: np.ndarray) -> tuple[float, ...]:
            return tuple(float(e) for e in v)

        return cls(
            mean=t(arr.mean(0)),
            std=t(arr.std(0)),
            q01=t(np.quantile(arr, 0.01, axis=0)),
            q99=t(np.quantile(arr, 0.99, axis=0)),
            min=t(arr.min(0)),
            max=t(arr.max(0)),
        )

    @property
    def dim(self) -> int:
        return len(self.mean)


@dataclass(frozen=True)
class NormStats:
    """Everything needed to move actions/state between robot units and model units."""

    action: ArrayStats  # statistics of expert actions, per action dim
    state: ArrayStats | None = None  # statistics of proprio/low-dim state, if the policy uses it
    action_mode: NormMode = "bounds"  # how actions are normalised
    state_mode: NormMode = "meanstd"  # how state is normalised
    binary_dims: tuple[int, ...] = field(default_factory=tuple)  # e.g. (6,): gripper, kept as is

    # -------------------------------------------------------------- actions
    def normalize_actions(self, a: torch.Tensor) -> torch.Tensor:
        return _apply(a, self.action, self.action_mode, self.binary_dims, inverse=False)

    def unnormalize_actions(self, a: torch.Tensor) -> torch.Tensor:
        return _apply(a, self.action, self.action_mode, self.binary_dims, inverse=True)

    def action_bounds(self, normalized: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-dim (low, high) clip bounds, in model units or in robot units."""
        lo = torch.tensor(self.action.min, dtype=torch.float32)
        hi = torch.tensor(self.action.max, dtype=torch.float32)
        if normalized:
            lo, hi = self.normalize_actions(lo), self.normalize_actions(hi)
            if self.action_mode == "bounds":
                # q01/q99 map to +-1; the observed extremes may lie a bit beyond.
                lo, hi = torch.minimum(lo, -torch.ones_like(lo)), torch.maximum(hi, torch.ones_like(hi))
        return lo, hi

    # -------------------------------------------------------------- state
    def normalize_state(self, s: torch.Tensor) -> torch.Tensor:
        if self.state is None:
            return s
        return _apply(s, self.state, self.state_mode, (), inverse=False)

    # -------------------------------------------------------------- JSON
    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NormStats:
        from energy_rerank.config import config_from_dict

        stats = config_from_dict(cls, data)
        if stats.state is not None and not isinstance(stats.state, ArrayStats):
            raise ValueError("stats.state must be an object of per-dim statistics")
        return stats

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / STATS_FILE
        path.write_text(json.dumps(self.to_dict(), indent=2))
        return path

    @classmethod
    def load(cls, directory: str | Path) -> NormStats:
        return cls.from_dict(json.loads((Path(directory) / STATS_FILE).read_text()))

    @classmethod
    def from_data(
        cls,
        actions: np.ndarray | torch.Tensor,
        state: np.ndarray | torch.Tensor | None = None,
        binary_dims: tuple[int, ...] = (),
        action_mode: NormMode = "bounds",
    ) -> NormStats:
        return cls(
            action=ArrayStats.from_array(actions),
            state=None if state is None else ArrayStats.from_array(state),
            action_mode=action_mode,
            binary_dims=tuple(binary_dims),
        )


def _apply(
    x: torch.Tensor, st: ArrayStats, mode: NormMode, keep: tuple[int, ...], inverse: bool
) -> torch.Tensor:
    if x.shape[-1] != st.dim:
        raise ValueError(f"expected last dim {st.dim}, got {tuple(x.shape)}")
    if mode == "identity":
        return x
    kw: dict[str, Any] = {"dtype": torch.float32, "device": x.device}
    if mode == "bounds":
        lo, hi = torch.tensor(st.q01, **kw), torch.tensor(st.q99, **kw)
        half = torch.clamp((hi - lo) / 2, min=1e-6)
        mid = (hi + lo) / 2
        y = x.float() * half + mid if inverse else (x.float() - mid) / half
    else:
        mean, std = torch.tensor(st.mean, **kw), torch.clamp(torch.tensor(st.std, **kw), min=1e-6)
        y = x.float() * std + mean if inverse else (x.float() - mean) / std
    if keep:
        idx = torch.tensor(keep, device=x.device)
        y[..., idx] = x[..., idx].float()
    return y.to(x.dtype)
