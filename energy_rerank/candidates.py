"""CandidateSampler: a policy's Proposals -> N candidate chunks [B, N, H, A] (normalised units).

Order of the candidates of one observation ("policy draws, layer actions, then noise"):
  0            the base chunk (the policy's own: last layer, or a sampling policy's draw 0)
  1 .. M-1     a sampling policy's other draws (`Proposals.draws`; M = 1 for other policies)
  M .. M+K-1   layer chunks, `config.layers` in that order (default: all but the last, latest first)
  M+K .. N-1   Gaussian perturbations: candidate j (counted from the first noise candidate) uses
               sigma = sigmas[j % len(sigmas)] * sigma_scale * dim_sigmas, around the base
               (or, with perturb_layers, around chunk (j // len(sigmas)) % (M+K) of the above).
               A share `offset_share` of the variance is one offset per dim for the whole chunk,
               the rest is i.i.d. per step: a policy's errors are mostly consistent over a chunk
               (heading for the wrong place), and i.i.d. noise in H * A dims almost never undoes them.
Gripper dims are binary: never perturbed, snapped to the nearer of `gripper_values` in every
candidate (the base included: the robot executes a binary gripper anyway), and for noise
candidates set by `gripper_mode`:
  "keep"  the source chunk's gripper;
  "flip"  odd noise candidates switch the gripper from a random step to the end of the chunk
          (an earlier or later open/close); even ones keep it;
  "vote"  per step, the majority of base + every layer chunk (ties go to the base).
Everything is clipped to [low, high] last.

Two properties the reranker relies on:
- row i depends only on (row i of the proposals, seeds[i], sigma_scales[i]): batching requests
  together never changes anyone's candidates;
- prefix: sample(p, n)[:, :k] == sample(p, k) for the same seeds. Noise is drawn from a
  per-row generator in fixed blocks of BLOCK candidates, so drawing more never reorders the
  first draws (a sampling policy's draws are prefix-stable too). The reranker samples max N of
  a batch once and slices per request.
sigma_scale 0 turns noise candidates into copies of their source chunk (plus gripper variants).
"""

from __future__ import annotations

import dataclasses
import math
import operator
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from energy_rerank.policy.base import Proposals, Proposer

MAX_CANDIDATES = 1024  # hard ceiling on N (the wire contract's limit)
BLOCK = 64  # noise candidates drawn per generator call; fixed so that draws are prefix-stable

GripperMode = Literal["keep", "flip", "vote"]


@dataclass(frozen=True)
class SamplerConfig:
    """How candidates are built from a policy's proposals."""

    layers: tuple[int, ...] | None = None  # layer chunks to include (None = all but the last, latest first)
    sigmas: tuple[float, ...] = (0.1, 0.3, 0.5)  # Gaussian sigma schedule, normalised units, cycled
    perturb_layers: bool = False  # noise around base and chosen layer chunks in turn (False: base only)
    gripper_dims: tuple[int, ...] = (6,)  # binary action dims: never Gaussian, snapped to gripper_values
    gripper_mode: GripperMode = "keep"  # noise candidates' gripper: "keep", "flip" or "vote" (see above)
    gripper_values: tuple[float, float] = (-1.0, 1.0)  # the two legal gripper values (open, closed)
    max_candidates: int = MAX_CANDIDATES  # largest N accepted (at most MAX_CANDIDATES)
    dim_sigmas: tuple[float, ...] | None = None  # per-dim multiplier of sigma ([A]; None = 1 everywhere)
    offset_share: float = 0.75  # share of the noise variance that is one offset per dim for all H steps
    draws: int = MAX_CANDIDATES  # most of a sampling policy's own draws among N (the rest: layers, noise)

    def __post_init__(self) -> None:
        if not self.sigmas or any(not (math.isfinite(s) and s >= 0) for s in self.sigmas):
            raise ValueError(f"sigmas must be a non-empty tuple of finite values >= 0, got {self.sigmas}")
        if self.gripper_mode not in ("keep", "flip", "vote"):
            raise ValueError(f"gripper_mode must be 'keep', 'flip' or 'vote', got {self.gripper_mode!r}")
        if len(self.gripper_values) != 2 or self.gripper_values[0] == self.gripper_values[1]:
            raise ValueError(f"gripper_values must be two different values, got {self.gripper_values}")
        if not 1 <= self.max_candidates <= MAX_CANDIDATES:
            raise ValueError(f"max_candidates must be in [1, {MAX_CANDIDATES}], got {self.max_candidates}")
        if not 0.0 <= self.offset_share <= 1.0:
            raise ValueError(f"offset_share must be in [0, 1], got {self.offset_share}")
        if self.dim_sigmas is not None and any(not (math.isfinite(s) and s >= 0) for s in self.dim_sigmas):
            raise ValueError(f"dim_sigmas must be finite values >= 0, got {self.dim_sigmas}")
        if not 1 <= self.draws <= MAX_CANDIDATES:
            raise ValueError(f"draws must be in [1, {MAX_CANDIDATES}], got {self.draws}")


class CandidateSampler:
    low: torch.Tensor  # [A] lower clip bound, normalised units
    high: torch.Tensor  # [A] upper clip bound, normalised units

    def __init__(self, config: SamplerConfig, low: torch.Tensor, high: torch.Tensor) -> None:
        self.config = config
        self.low = torch.as_tensor(low, dtype=torch.float32).flatten().cpu()
        self.high = torch.as_tensor(high, dtype=torch.float32).flatten().cpu()
        a = self.low.numel()
        if self.high.numel() != a or not bool((self.low <= self.high).all()):
            raise ValueError(
                f"low/high must be [A] with low <= high, got {tuple(low.shape)} and {tuple(high.shape)}"
            )
        if any(not 0 <= d < a for d in config.gripper_dims):
            raise ValueError(f"gripper_dims {config.gripper_dims} outside the {a} action dims")
        if config.dim_sigmas is not None and len(config.dim_sigmas) != a:
            raise ValueError(f"dim_sigmas has {len(config.dim_sigmas)} entries, expected A = {a}")
        g = list(config.gripper_dims)
        lo_v, hi_v = sorted(config.gripper_values)
        if g and (bool((self.low[g] > lo_v).any()) or bool((self.high[g] < hi_v).any())):
            raise ValueError(
                f"gripper_values {config.gripper_values} lie outside the bounds of gripper dims {g}"
            )
        dim_sigma = (
            torch.ones(a)
            if config.dim_sigmas is None
            else torch.tensor(config.dim_sigmas, dtype=torch.float32)
        )
        dim_sigma[g] = 0.0  # the gripper is binary: never Gaussian
        self._dim_sigma = dim_sigma  # [A]
        self._sigmas = torch.tensor(config.sigmas, dtype=torch.float32)  # [len(sigmas)]

    @classmethod
    def for_policy(cls, proposer: Proposer, config: SamplerConfig | None = None) -> CandidateSampler:
        """Bounds from the policy's statistics ([-1, 1] without any), gripper dims from its description."""
        config = config or SamplerConfig()
        a = proposer.description.action_dim
        if proposer.stats is not None:
            low, high = proposer.stats.action_bounds(normalized=True)
        else:
            low, high = -torch.ones(a), torch.ones(a)
        config = dataclasses.replace(config, gripper_dims=tuple(proposer.description.gripper_dims))
        return cls(config, low, high)

    # ------------------------------------------------------------------ sampling
    def sample(
        self,
        proposals: Proposals,
        num_candidates: int,
        seeds: Sequence[int | None] | None = None,
        sigma_scales: Sequence[float] | None = None,
    ) -> torch.Tensor:
        """-> candidates [B, N, H, A] float32 on the proposals' device. seeds[i] None = random."""
        b = proposals.batch
        try:
            n = operator.index(num_candidates)
        except TypeError:
            n = 0
        if not 1 <= n <= self.config.max_candidates:
            raise ValueError(
                f"num_candidates must be an int in [1, {self.config.max_candidates}], got {num_candidates!r}"
            )
        seeds = [None] * b if seeds is None else list(seeds)
        scales = [1.0] * b if sigma_scales is None else [float(s) for s in sigma_scales]
        if len(seeds) != b or len(scales) != b:
            raise ValueError(
                f"seeds and sigma_scales need one entry per observation ({b}), got {len(seeds)}, {len(scales)}"
            )
        for i, s in enumerate(scales):
            if not (math.isfinite(s) and s >= 0):
                raise ValueError(f"sigma_scales[{i}] must be finite and >= 0, got {s}")
        a = proposals.base.shape[-1]
        if a != self.low.numel():
            raise ValueError(f"proposals have action dim {a}, the sampler's bounds have {self.low.numel()}")
        base = proposals.base.detach().float().cpu()  # [B, H, A]
        layers = proposals.layer_actions.detach().float().cpu()  # [B, L, H, A]
        draws = base[:, None] if proposals.draws is None else proposals.draws.detach().float().cpu()  # [B, M, H, A]
        index = self._layer_indices(layers.shape[1])
        seed_values = [secrets.randbits(63) if s is None else int(s) for s in seeds]
        rows = [self._row(draws[i], layers[i], index, n, seed_values[i], scales[i]) for i in range(b)]
        return torch.stack(rows).to(proposals.base.device)  # [B, N, H, A]

    def _row(
        self, draws: torch.Tensor, layers: torch.Tensor, index: list[int], n: int, seed: int, scale: float
    ) -> torch.Tensor:
        """One observation: draws [M, H, A] (draw 0 = base), layers [L, H, A] -> [n, H, A]."""
        g = list(self.config.gripper_dims)
        base = draws[0]  # [H, A]
        fixed = torch.cat([draws[: self.config.draws], layers[index]])  # [M+K, H, A]
        k = min(n, fixed.shape[0])
        m = n - k  # noise candidates
        if m == 0:
            out = fixed[:k].clone()
            out[..., g] = self._snap(out[..., g])
            return self._clip(out)
        noise, offset, flip_at = _draw(seed, m, base.shape)  # [m, H, A], [m, A], [m]
        f = self.config.offset_share
        noise = math.sqrt(f) * offset[:, None] + math.sqrt(1.0 - f) * noise  # still unit variance per entry
        j = torch.arange(m)
        sources = (
            fixed[(j // len(self.config.sigmas)) % fixed.shape[0]]
            if self.config.perturb_layers
            else base.expand(m, -1, -1)
        )
        sigma = self._sigmas[j % len(self.config.sigmas)] * scale  # [m]
        noisy = sources + noise * sigma[:, None, None] * self._dim_sigma  # [m, H, A]
        out = torch.cat([fixed[:k], noisy])  # [n, H, A]
        if g:
            out[..., g] = self._snap(out[..., g])
            out[k:, :, g] = self._noise_gripper(out[k:, :, g], j, flip_at, base[:, g], layers[:, :, g])
        return self._clip(out)

    def _noise_gripper(
        self,
        grip: torch.Tensor,
        j: torch.Tensor,
        flip_at: torch.Tensor,
        base: torch.Tensor,
        layers: torch.Tensor,
    ) -> torch.Tensor:
        """grip [m, H, G] snapped source grippers -> the noise candidates' grippers per gripper_mode."""
        mode, (v0, v1) = self.config.gripper_mode, self.config.gripper_values
        if mode == "keep":
            return grip
        if mode == "flip":
            steps = torch.arange(grip.shape[1])
            flip = ((j % 2 == 1)[:, None] & (steps[None, :] >= flip_at[:, None]))[..., None]  # [m, H, 1]
            return torch.where(flip, (v0 + v1) - grip, grip)
        votes = torch.cat([base[None], layers])  # [L+1, H, G]
        closed = (self._snap(votes) == v1).float().mean(0)  # [H, G] fraction voting v1
        tie_break = self._snap(base)
        vote = torch.where(closed > 0.5, torch.full_like(tie_break, v1), torch.full_like(tie_break, v0))
        vote = torch.where(closed == 0.5, tie_break, vote)
        return vote.expand_as(grip).clone()

    def _snap(self, x: torch.Tensor) -> torch.Tensor:
        v0, v1 = self.config.gripper_values
        mid = (v0 + v1) / 2
        near_v1 = (x >= mid) if v1 > v0 else (x <= mid)
        return torch.where(near_v1, torch.full_like(x, v1), torch.full_like(x, v0))

    def _clip(self, x: torch.Tensor) -> torch.Tensor:
        return torch.maximum(torch.minimum(x, self.high), self.low)

    def _layer_indices(self, num_layers: int) -> list[int]:
        if self.config.layers is None:
            return list(range(num_layers - 2, -1, -1))
        for i in self.config.layers:
            if not -num_layers <= i < num_layers:
                raise ValueError(
                    f"SamplerConfig.layers has index {i}, but the policy has {num_layers} layers"
                )
        return [i % num_layers for i in self.config.layers]


def _draw(seed: int, m: int, chunk_shape: torch.Size) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For m candidates from one seeded stream, BLOCK at a time: per-step noise [m, H, A],
    per-chunk offsets [m, A] and flip steps [m]."""
    gen = torch.Generator().manual_seed(seed)
    h, a = chunk_shape
    noise, offsets, flips = [], [], []
    for _ in range(-(-m // BLOCK)):
        noise.append(torch.randn(BLOCK, h, a, generator=gen))
        offsets.append(torch.randn(BLOCK, a, generator=gen))
        flips.append(torch.randint(0, h, (BLOCK,), generator=gen))
    return torch.cat(noise)[:m], torch.cat(offsets)[:m], torch.cat(flips)[:m]
