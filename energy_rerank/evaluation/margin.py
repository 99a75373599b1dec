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


def closed_loop_margin(report: dict[str, Any], n: int) -> dict[str, Any]:
    """The switch margin chosen on closed-loop episodes (an `eval libero` report of a margin sweep):
    among the head's settings at N = n, the one with the most successes, provided it has more than
    N = 1 on the same episodes; otherwise inf (never switch). Ties go to the larger margin. Offline
    chunk error can favour a margin that switches on nearly every step while the robot fails (a
    small average gain in L1, spread over steps where a wrong switch ends the episode), so where
    the simulator is at hand this is the calibration to serve with."""
    settings = report["settings"]
    if "N=1" not in settings:
        raise ValueError("the sweep needs N = 1 (the policy alone) to compare the margins with")
    base = settings["N=1"]["overall"]["successes"]
    server_margin = report.get("server", {}).get("switch_margin")
    sweep = []
    for s in settings.values():
        if s["n_candidates"] != n or s["selector"] != "head":
            continue
        margin = s["switch_margin"] if s["switch_margin"] is not None else server_margin
        if margin is None:
            continue
        sweep.append({"margin": float(margin), "successes": s["overall"]["successes"],
                      "episodes": s["overall"]["episodes"], "switched": s["reranked_share"]})  # fmt: skip
    if not sweep:
        raise ValueError(f"no head setting at N = {n} with a known switch margin in the report")
    best = max(sweep, key=lambda r: (r["successes"], r["margin"]))
    chosen = best if best["successes"] > base else None
    return {
        "source": "closed_loop",
        "n": n,
        "margin": chosen["margin"] if chosen else float("inf"),
        "base_successes": base,
        # strict JSON, as selection.json is written: an infinite margin is spelled "inf"
        "sweep": [{**r, "margin": r["margin"] if np.isfinite(r["margin"]) else "inf"}
                  for r in sorted(sweep, key=lambda r: r["margin"])],  # fmt: skip
        # the switch rate the robot showed at that margin: what the server's switch-rate watch expects
        "held_out": {f"switched@{n}": chosen["switched"] if chosen else 0.0},
    }
