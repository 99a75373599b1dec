"""Reranker: proposer -> candidate sampler -> scorer -> selection. The one call a server makes.

Robot safety lives here, not in the server: whatever goes wrong in scoring, the robot gets a
finite chunk inside the action bounds. If the scorer raises or returns non-finite energies,
the policy's base chunk is returned and flagged as a fallback; if even the base chunk is not
finite, `PolicyFailure` is raised (the server answers with an error rather than a NaN).

The switch margin guards against a head that is confidently wrong: the chosen candidate replaces
the base chunk only if its energy is lower by more than the margin (0 = plain argmin, inf = always
the policy's chunk). `energy-rerank eval offline` measures the margin a head needs.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from energy_rerank.candidates import CandidateSampler
from energy_rerank.checkpoint import SwitchExpectation
from energy_rerank.normalize import NormStats
from energy_rerank.policy.base import Observation, Proposals, Proposer, propose_with_draws
from energy_rerank.scoring import Scorer
from energy_rerank.selection import SelectionRule, check_switch_margin, choose, robot_bounds, to_robot

log = logging.getLogger(__name__)


class PolicyFailure(RuntimeError):
    """The policy produced no usable chunk (raised, or returned non-finite values)."""


@dataclass(frozen=True)
class SelectParams:
    """Per-request knobs of SelectAction."""

    num_candidates: int = 64  # N, including the base chunk (N = 1 returns the policy's own chunk)
    sigma_scale: float = 1.0  # multiplies the sampler's noise sigmas (0 = layer chunks only)
    seed: int | None = None  # fixes the candidates (and softmax draw) for this request
    rule: SelectionRule = "argmin"  # argmin of energy, or a draw from softmax(-E / temperature)
    temperature: float = 1.0  # softmax temperature (energy units)
    return_candidates: bool = False  # also return all N candidates in robot units
    switch_margin: float | None = None  # energy gain needed to leave the base chunk (None = the reranker's)


@dataclass
class Selection:
    """The reranker's answer for one observation."""

    chunk: np.ndarray  # [H, A] chosen chunk, robot units, clipped to the action bounds
    index: int  # chosen candidate (0 = the policy's base chunk)
    energies: np.ndarray  # [N] float32 energies (empty if scoring failed)
    candidates: np.ndarray | None  # [N, H, A] robot units, if asked for (None if any was non-finite)
    fallback: bool  # True when the base chunk was returned because scoring failed
    fallback_reason: str  # why, when fallback
    timing: dict[str, float]  # seconds: policy, candidates, score, total (per batch)


class Reranker:
    def __init__(
        self,
        proposer: Proposer,
        scorer: Scorer,
        sampler: CandidateSampler,
        stats: NormStats | None = None,
        model_version: str = "",
        max_candidates: int = 1024,
        switch_margin: float = 0.0,
        switch_rates: SwitchExpectation | None = None,
    ) -> None:
        check_switch_margin(switch_margin, "switch_margin")
        self.proposer = proposer
        self.scorer = scorer
        self.sampler = sampler
        self.stats = stats if stats is not None else proposer.stats
        self.model_version = model_version
        self.max_candidates = max_candidates
        self.switch_margin = switch_margin  # default for requests that leave theirs unset
        # The head's held-out switch rates at this margin (its bundle's selection.json), for the
        # server's switch-rate watch; None when unrecorded or measured at another margin.
        self.switch_rates = switch_rates if switch_rates is not None and switch_rates.margin == switch_margin else None
        self.low, self.high = robot_bounds(self.stats, sampler.low, sampler.high)  # [A] robot units

    def select(self, observations: Sequence[Observation], params: Sequence[SelectParams]) -> list[Selection]:
        """Choose one chunk per observation. len(params) == len(observations)."""
        if len(observations) != len(params):
            raise ValueError(f"{len(observations)} observations but {len(params)} parameter sets")
        for p in params:
            if not 1 <= p.num_candidates <= self.max_candidates:
                raise ValueError(
                    f"num_candidates must be in [1, {self.max_candidates}], got {p.num_candidates}"
                )
            if p.rule == "softmax" and not p.temperature > 0:
                raise ValueError(f"temperature must be > 0 for softmax selection, got {p.temperature}")
            if p.switch_margin is not None:
                check_switch_margin(p.switch_margin, "switch_margin")
        t0 = time.perf_counter()
        n_max = max(p.num_candidates for p in params)
        # One seed per request feeds both the policy's own draws (a sampling policy) and the noise.
        seeds = [secrets.randbits(63) if p.seed is None else p.seed for p in params]
        try:
            proposals = propose_with_draws(
                self.proposer, observations, min(n_max, self.sampler.config.draws), seeds
            )
        except Exception as e:
            raise PolicyFailure(f"policy failed: {e}") from e
        # Checked before the sampler, whose clipping would turn an Inf into a saturated action.
        if not bool(torch.isfinite(proposals.base).all()):
            raise PolicyFailure("policy produced a non-finite chunk")
        alternatives = [proposals.layer_actions.flatten(1)]
        if proposals.draws is not None:
            alternatives.append(proposals.draws.flatten(1))
        broken = (~torch.isfinite(torch.cat(alternatives, 1))).any(1).tolist()  # [B] bad alternatives
        t1 = time.perf_counter()
        candidates = self.sampler.sample(
            proposals,
            num_candidates=n_max,
            seeds=seeds,
            sigma_scales=[p.sigma_scale for p in params],
        )  # [B, n_max, H, A] normalised
        t2 = time.perf_counter()
        energies, reason = self._score(proposals, candidates)
        t3 = time.perf_counter()
        timing = {"policy": t1 - t0, "candidates": t2 - t1, "score": t3 - t2}
        out = [
            self._finish(
                i, p, proposals, candidates, None, "policy produced non-finite alternative chunks (layers or draws)", timing, False
            )
            if broken[i]
            else self._finish(i, p, proposals, candidates, energies, reason, timing)
            for i, p in enumerate(params)
        ]
        total = time.perf_counter() - t0
        for s in out:
            s.timing["total"] = total
        return out

    def _score(self, proposals: Proposals, candidates: torch.Tensor) -> tuple[torch.Tensor | None, str]:
        if candidates.shape[1] == 1:
            return torch.zeros(candidates.shape[:2]), ""  # nothing to rank: skip the scorer
        try:
            energies = self.scorer.score(proposals.context, proposals.valid, candidates).float().cpu()
        except Exception as e:  # the robot still gets a chunk; the reason travels in the response
            log.exception("scorer failed; returning base chunks")
            return None, f"scorer error: {type(e).__name__}: {e}"
        return energies, ""

    def _finish(
        self,
        i: int,
        p: SelectParams,
        proposals: Proposals,
        candidates: torch.Tensor,
        energies: torch.Tensor | None,
        reason: str,
        timing: dict[str, float],
        candidates_usable: bool = True,  # False: some were built from non-finite policy output
    ) -> Selection:
        n = p.num_candidates
        cand = candidates[i, :n]  # [N, H, A] normalised
        e = None if energies is None else energies[i, :n]
        if e is not None and not bool(torch.isfinite(e).all()):
            e, reason = None, "scorer returned non-finite energies"
        if e is None:
            index, fallback = 0, True
        else:
            margin = self.switch_margin if p.switch_margin is None else p.switch_margin
            index = int(choose(e[None], margin, [p.rule], [p.temperature], [p.seed])[0])
            fallback = False
        chunk = self._to_robot(cand[index])
        if not np.isfinite(chunk).all():
            if index == 0:
                raise PolicyFailure("policy produced a non-finite chunk")
            index, fallback, reason = 0, True, "chosen chunk was non-finite"
            chunk = self._to_robot(cand[0])
            if not np.isfinite(chunk).all():
                raise PolicyFailure("policy produced a non-finite chunk")
        returned = self._to_robot(cand) if p.return_candidates and candidates_usable else None
        if returned is not None and not np.isfinite(returned).all():
            returned = None  # a robot client must never receive NaN actions, even as alternatives
        return Selection(
            chunk=chunk,
            index=index,
            energies=np.zeros(0, np.float32) if e is None else e.numpy().astype(np.float32),
            candidates=returned,
            fallback=fallback,
            fallback_reason=reason if fallback else "",
            timing=dict(timing),
        )

    def _to_robot(self, a: torch.Tensor) -> np.ndarray:
        """Normalised [..., A] -> robot units, clipped to the bounds. NaN survives the clip: callers check."""
        return to_robot(a, self.stats, self.low, self.high).numpy().astype(np.float32)

    def score_candidates(
        self, hidden: torch.Tensor, valid: torch.Tensor, candidates: torch.Tensor, normalized: bool = True
    ) -> torch.Tensor:
        """ScoreCandidates: hidden [B, S, D], valid [B, S], candidates [B, N, H, A] -> [B, N].

        Candidates in robot units (normalized=False) are normalised with the bundle's statistics.
        """
        if not normalized and self.stats is not None:
            candidates = self.stats.normalize_actions(candidates.float())
        return self.scorer.score(hidden, valid, candidates).float().cpu()
