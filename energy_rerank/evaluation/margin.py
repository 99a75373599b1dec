"""The switch margin a head needs, measured on recorded episodes (`energy-rerank eval offline`).

With margin m the server keeps the policy's chunk unless the best candidate's energy is lower by
more than m (`SelectParams.switch_margin`). m = 0 trusts the head fully, m = inf never reranks,
so the best m on data is never worse there than the policy alone. The margin is chosen on one
half of the episodes (even indices) and its effect reported on the other half (odd indices),
so the reported gain is not the selection's own optimism. Candidate margins are quantiles of the
energy gap E[base] - min E over the calibration windows, plus 0 and inf; ties go to the larger
(more conservative) margin.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from energy_rerank.evaluation.offline import StepResults
from energy_rerank.selection import choose

QUANTILES = (0.5, 0.75, 0.9, 0.95, 0.99)  # of the calibration gaps, as candidate margins


def chosen_l1(res: StepResults, n: int, margin: float) -> tuple[np.ndarray, np.ndarray]:
    """L1 [W] of the chunk served with this margin at N = n, and whether it left the base [W]."""
    chosen = choose(res.candidate_energy[:, :n], margin)  # [W] the server's rule on the same energies
    return res.candidate_l1[np.arange(len(chosen)), chosen], chosen != 0


def episode_se(values: np.ndarray, episode: np.ndarray) -> float:
    """Standard error of the mean of per-step values [W], clustered by episode [W]."""
    means = np.array([values[episode == e].mean() for e in np.unique(episode)])
    return float(means.std(ddof=1) / np.sqrt(len(means))) if len(means) > 1 else 0.0


def calibrate(res: StepResults, n: int, ns: list[int]) -> dict[str, Any]:
    """Pick the margin on even episodes at N = n; report every N in ns on odd episodes with it."""
    calib = res.episode % 2 == 0
    test = ~calib
    if not calib.any() or not test.any():
        return {"error": "needs at least two episodes (calibration on even, report on odd)"}
    energy = res.candidate_energy[calib, :n]
    gap = energy[:, 0] - energy.min(axis=1)  # [W_calib] >= 0
    margins = sorted({0.0, float("inf"), *(float(q) for q in np.quantile(gap, QUANTILES))})
    sweep = []
    for m in margins:
        l1, switched = chosen_l1(res, n, m)
        sweep.append({"margin": m, "l1": float(l1[calib].mean()), "switched": float(switched[calib].mean())})
    best = min(sweep, key=lambda r: (r["l1"], -r["margin"]))  # lowest error, then the most conservative
    base = res.candidate_l1[test, 0]  # [W_test]
    held_out: dict[str, Any] = {"steps": int(test.sum()), "base": float(base.mean())}
    for k in ns:
        plain, _ = chosen_l1(res, k, 0.0)
        guarded, switched = chosen_l1(res, k, best["margin"])
        oracle = float(res.candidate_l1[test, :k].min(axis=1).mean())
        gain = base - guarded[test]  # [W_test] per-step improvement over the policy's chunk
        held_out[f"rerank@{k}"] = float(plain[test].mean())
        held_out[f"margin@{k}"] = float(guarded[test].mean())
        held_out[f"switched@{k}"] = float(switched[test].mean())
        held_out[f"oracle@{k}"] = oracle
        # Share of the oracle's gain the guarded selection recovers, and the standard error of the gain
        # over episodes (steps of one episode are not independent; episodes are).
        held_out[f"margin_share@{k}"] = float(gain.mean() / (base.mean() - oracle)) if base.mean() > oracle else 0.0
        held_out[f"margin_gain_se@{k}"] = episode_se(gain, res.episode[test])
    return {"n": n, "margin": best["margin"], "sweep": sweep, "held_out": held_out}
