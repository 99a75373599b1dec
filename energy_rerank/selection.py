"""The selection rule: which of N scored candidates the robot gets, and in which units.

Everything that decides or replays a choice calls this module: the Reranker (serving),
`eval offline`, the switch-margin calibration and training's held-out ranking metric. So an
offline number is the number the server would produce for the same energies.

The rule, for one observation with energies E [N] (candidate 0 = the policy's own chunk):
  1. pick: argmin E, or a draw from softmax(-E / temperature) seeded per request;
  2. switch margin m: the pick replaces candidate 0 only if E[0] - E[pick] > m
     (m = 0: plain argmin; m = inf: always the policy's chunk);
  3. the chosen normalised chunk is unnormalised with the policy's statistics and clipped to
     the action bounds (robot units).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch

from energy_rerank.normalize import NormStats

SelectionRule = Literal["argmin", "softmax"]


def check_switch_margin(margin: float, name: str) -> None:
    """A switch margin is >= 0 (inf allowed: never switch); NaN or negative is a caller error."""
    if not margin >= 0:  # also catches NaN
        raise ValueError(f"{name} must be >= 0 (inf = always keep the base chunk), got {margin}")


def pick(energies: torch.Tensor, rule: SelectionRule = "argmin", temperature: float = 1.0,
         seed: int | None = None) -> int:  # fmt: skip
    """Step 1 for one observation: energies [N] -> the candidate the rule prefers."""
    if rule == "argmin" or energies.numel() == 1:
        return int(torch.argmin(energies))
    gen = torch.Generator().manual_seed(seed if seed is not None else int(time.time_ns() % 2**31))
    probs = torch.softmax(-energies.double() / temperature, dim=0)
    return int(torch.multinomial(probs, 1, generator=gen))


def apply_margin(energies: np.ndarray | torch.Tensor, picked: np.ndarray, margin: float) -> np.ndarray:
    """Step 2: energies [W, N], picked [W] -> chosen [W] (0 where the gain over candidate 0 is <= margin)."""
    e = energies.detach().cpu().double().numpy() if isinstance(energies, torch.Tensor) else np.asarray(energies)
    rows = np.arange(len(picked))
    gain = e[rows, 0] - e[rows, picked]  # [W] energy gained by leaving the policy's chunk
    return np.where((picked != 0) & (gain > margin), picked, 0)


def choose(
    energies: np.ndarray | torch.Tensor,
    margin: float = 0.0,
    rules: Sequence[SelectionRule] | None = None,
    temperatures: Sequence[float] | None = None,
    seeds: Sequence[int | None] | None = None,
) -> np.ndarray:
    """Steps 1 + 2 for W observations: energies [W, N] -> chosen candidate [W]. Without rules, argmin."""
    e = torch.as_tensor(energies)
    if e.dim() != 2:
        raise ValueError(f"energies must be [W, N], got {tuple(e.shape)}")
    if rules is None:
        picked = e.argmin(dim=1).cpu().numpy()  # [W]
    else:
        w = e.shape[0]
        temps = temperatures if temperatures is not None else [1.0] * w
        seeds_ = seeds if seeds is not None else [None] * w
        picked = np.array([pick(e[i], rules[i], temps[i], seeds_[i]) for i in range(w)], np.int64)
    return apply_margin(e, picked, margin)


def robot_bounds(stats: NormStats | None, low: torch.Tensor, high: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The clip bounds [A] in robot units: the statistics' bounds, else the (unnormalised) low/high given."""
    if stats is not None:
        low, high = stats.action_bounds(normalized=False)
    return low.float().cpu(), high.float().cpu()


def to_robot(actions: torch.Tensor, stats: NormStats | None, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """Step 3: normalised [..., A] -> robot units clipped to [low, high] (robot units, [A]).

    NaN survives the clip: callers that hand a chunk to a robot check finiteness themselves."""
    a = actions.float().cpu()
    if stats is not None:
        a = stats.unnormalize_actions(a)
    return torch.maximum(torch.minimum(a, high), low)
