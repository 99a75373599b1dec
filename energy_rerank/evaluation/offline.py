"""Offline evaluation of reranking on recorded episodes: which chunk would be chosen, and how
close is it to the demonstrated one?

For every evaluated step t the policy proposes, the sampler builds N_max candidates (one
seeded draw; the candidates at N are its first N, as in the Reranker), and the energy head
scores them together with the recorded chunk a[t:t+H]. Errors are measured in robot units
against the recorded chunk, after the same selection rule, unnormalise and clip the Reranker
applies (energy_rerank.selection):
  base      candidate 0, the policy's own chunk
  rerank@N  argmin of energy over the first N
  oracle@N  the best of the first N by error (what a perfect scorer could reach)
  random@N  a uniformly random one of the first N (its expectation: the mean error)
plus the Spearman rank correlation between energy and error over the N_max candidates, and
where the recorded chunk's energy falls among the candidates'.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from energy_rerank.candidates import CandidateSampler
from energy_rerank.policy.base import Proposer, propose_with_draws
from energy_rerank.policy.windows import Windows
from energy_rerank.scoring import Scorer
from energy_rerank.selection import choose, robot_bounds, to_robot


@dataclass(frozen=True)
class OfflineConfig:
    """What to evaluate."""

    ns: tuple[int, ...] = (1, 4, 16, 64, 256)  # candidate counts N reported (prefixes of one draw)
    batch: int = 32  # observations per policy / scorer call
    seed: int = 0  # candidates of window i use seed + i: the same file gives the same report
    sigma_scale: float = 1.0  # multiplies the sampler's noise sigmas

    def __post_init__(self) -> None:
        if not self.ns or min(self.ns) < 1 or list(self.ns) != sorted(set(self.ns)):
            raise ValueError(f"ns must be increasing positive counts, got {self.ns}")


@dataclass
class StepResults:
    """Per-window arrays ([W] = evaluated windows); `aggregate` turns them into the report."""

    l1: dict[str, np.ndarray]  # "base", "rerank@N", "oracle@N", "random@N" -> [W] mean |chunk - expert|
    dim_err: dict[str, np.ndarray]  # "base", "rerank@N" -> [W, A] per-dim mean |chunk - expert| over H
    spearman: np.ndarray  # [W] rank correlation of energy and L1 over the N_max candidates
    expert_rank: np.ndarray  # [W] share of the N_max candidates with energy below the recorded chunk's
    expert_energy: np.ndarray  # [W] energy of the recorded chunk
    candidate_energy: np.ndarray  # [W, N_max] energies of the candidates
    candidate_l1: np.ndarray  # [W, N_max] L1 of every candidate (candidate 0 = base)
    task: np.ndarray  # [W] task label of each window
    episode: np.ndarray  # [W] episode index of each window (Windows.episode)


def evaluate_windows(
    windows: Windows,
    tasks: Sequence[str],
    proposer: Proposer,
    scorer: Scorer,
    sampler: CandidateSampler,
    config: OfflineConfig = OfflineConfig(),
) -> StepResults:
    """Score every window; tasks[i] labels window i."""
    if len(tasks) != len(windows):
        raise ValueError(f"{len(tasks)} task labels for {len(windows)} windows")
    n_max = max(config.ns)
    parts: list[dict[str, np.ndarray]] = []
    for idx, robot, energies in _scored_batches(windows, proposer, scorer, sampler, config, n_max, with_expert=True):
        expert = windows.chunks[idx]  # [B, H, A] robot units
        abs_err = np.abs(robot - expert[:, None])  # [B, N, H, A]
        parts.append(
            {
                "l1": abs_err.mean(axis=(2, 3)),  # [B, N]
                "dim": abs_err.mean(axis=2),  # [B, N, A]
                "energy": energies[:, :n_max],  # [B, N]
                "expert_energy": energies[:, n_max],  # [B]
            }
        )
    l1 = np.concatenate([p["l1"] for p in parts])  # [W, N]
    dim = np.concatenate([p["dim"] for p in parts])  # [W, N, A]
    energy = np.concatenate([p["energy"] for p in parts])  # [W, N]
    expert_energy = np.concatenate([p["expert_energy"] for p in parts])  # [W]
    rows = np.arange(len(l1))
    out_l1 = {"base": l1[:, 0]}
    out_dim = {"base": dim[:, 0]}
    for n in config.ns:
        chosen = choose(energy[:, :n])  # [W] plain argmin (margin 0), the server's rule
        out_l1[f"rerank@{n}"] = l1[rows, chosen]
        out_l1[f"oracle@{n}"] = l1[:, :n].min(axis=1)
        out_l1[f"random@{n}"] = l1[:, :n].mean(axis=1)
        out_dim[f"rerank@{n}"] = dim[rows, chosen]
    return StepResults(
        l1=out_l1,
        dim_err=out_dim,
        spearman=_spearman_rows(energy, l1),
        expert_rank=(energy < expert_energy[:, None]).mean(axis=1),
        expert_energy=expert_energy,
        candidate_energy=energy,
        candidate_l1=l1,
        task=np.asarray(list(tasks)),
        episode=np.asarray(windows.episode),
    )


def chosen_chunks(
    windows: Windows,
    proposer: Proposer,
    scorer: Scorer,
    sampler: CandidateSampler,
    n: int,
    margin: float = 0.0,
    config: OfflineConfig = OfflineConfig(),
) -> tuple[np.ndarray, np.ndarray]:
    """The chunk the server would return for every window at N = n and this switch margin, with
    window i's candidates seeded config.seed + i: (chunks [W, H, A] robot units, indices [W])."""
    chunks, indices = [], []
    for _, robot, energies in _scored_batches(windows, proposer, scorer, sampler, config, n, with_expert=False):
        chosen = choose(energies, margin)  # [B]
        chunks.append(robot[np.arange(len(chosen)), chosen])
        indices.append(chosen)
    return np.concatenate(chunks), np.concatenate(indices)


def _scored_batches(
    windows: Windows,
    proposer: Proposer,
    scorer: Scorer,
    sampler: CandidateSampler,
    config: OfflineConfig,
    n: int,
    with_expert: bool,
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per batch of windows: (window ids [B], candidates in robot units as served [B, n, H, A],
    energies [B, n] or, with_expert, [B, n + 1] with the recorded chunk's energy last)."""
    if (
        proposer.description.chunk_len != windows.chunk_len
        or proposer.description.action_dim != windows.action_dim
    ):
        raise ValueError(
            f"policy produces chunks [{proposer.description.chunk_len}, {proposer.description.action_dim}], "
            f"recorded windows are [{windows.chunk_len}, {windows.action_dim}]"
        )
    stats = proposer.stats
    low, high = robot_bounds(stats, sampler.low, sampler.high)
    for start in tqdm(range(0, len(windows), config.batch), desc="eval offline", unit="batch"):
        idx = np.arange(start, min(start + config.batch, len(windows)))
        obs = [windows.observations[i] for i in idx]
        seeds = [config.seed + int(i) for i in idx]
        with torch.no_grad():
            proposals = propose_with_draws(proposer, obs, min(n, sampler.config.draws), seeds)
            cands = sampler.sample(
                proposals,
                n,
                seeds=seeds,
                sigma_scales=[config.sigma_scale] * len(idx),
            )  # [B, n, H, A] normalised
            scored = cands
            if with_expert:
                expert = torch.from_numpy(windows.chunks[idx])  # [B, H, A] robot units
                expert_norm = expert if stats is None else stats.normalize_actions(expert)
                scored = torch.cat([cands, expert_norm[:, None].to(cands)], dim=1)  # [B, n + 1, H, A]
            energies = scorer.score(proposals.context, proposals.valid, scored).float().cpu().numpy()
        yield idx, to_robot(cands, stats, low, high).numpy(), energies


def _spearman_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Row-wise Spearman correlation of x, y [W, N] (ordinal ranks; NaN where a row is constant)."""
    rx = np.argsort(np.argsort(x, axis=1), axis=1).astype(np.float64)
    ry = np.argsort(np.argsort(y, axis=1), axis=1).astype(np.float64)
    rx -= rx.mean(axis=1, keepdims=True)
    ry -= ry.mean(axis=1, keepdims=True)
    den = np.sqrt((rx**2).sum(axis=1) * (ry**2).sum(axis=1))
    const = (np.ptp(x, axis=1) == 0) | (np.ptp(y, axis=1) == 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = (rx * ry).sum(axis=1) / den
    rho[const] = np.nan
    return rho
