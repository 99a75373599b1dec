"""Offline results -> a JSON-able report (overall and per task) and PNG plots.

Every mean comes with its standard error over evaluated steps (steps of one episode are
correlated, so treat it as a lower bound on the uncertainty). "oracle_gain_share@N" is the
part of the best-of-N improvement over the base chunk that the energy head recovers:
(base - rerank@N) / (base - oracle@N).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from energy_rerank.evaluation.margin import calibrate
from energy_rerank.evaluation.offline import StepResults


def summarize(res: StepResults, mask: np.ndarray | None = None) -> dict[str, Any]:
    """Means (and standard errors) of every metric over the windows in mask (None = all)."""
    m = np.ones(len(res.task), bool) if mask is None else mask
    count = int(m.sum())

    def mean_se(x: np.ndarray) -> dict[str, float]:
        x = x[m]
        x = x[np.isfinite(x)]
        if not len(x):
            return {"mean": float("nan"), "se": float("nan")}
        return {"mean": float(x.mean()), "se": float(x.std(ddof=1) / np.sqrt(len(x))) if len(x) > 1 else 0.0}

    l1 = {k: mean_se(v) for k, v in res.l1.items()}
    base = l1["base"]["mean"]
    ns = sorted(int(k.split("@")[1]) for k in res.l1 if k.startswith("rerank@"))
    gain = {}
    for n in ns:
        room = base - l1[f"oracle@{n}"]["mean"]
        gain[f"oracle_gain_share@{n}"] = (
            (base - l1[f"rerank@{n}"]["mean"]) / room if room > 1e-12 else float("nan")
        )
    dims = {k: v[m].mean(axis=0).round(6).tolist() for k, v in res.dim_err.items()}
    return {
        "steps": count,
        "l1": l1,
        **gain,
        "per_dim_error": dims,
        "spearman_energy_vs_error": mean_se(res.spearman),
        "expert_energy_rank": mean_se(res.expert_rank),  # share of candidates scored below the recorded chunk
        "best_n": ns[int(np.argmin([l1[f"rerank@{n}"]["mean"] for n in ns]))],
    }


def build_report(res: StepResults, meta: dict[str, Any], margin_n: int | None = None) -> dict[str, Any]:
    """Overall and per-task summaries; with margin_n, the switch margin calibrated at N = margin_n
    (energy_rerank.evaluation.margin) and its effect on held-out episodes at every N."""
    tasks = sorted(set(res.task.tolist()))
    report = {
        "meta": meta,
        "overall": summarize(res),
        "per_task": {t: summarize(res, res.task == t) for t in tasks},
    }
    if margin_n is not None:
        ns = sorted(int(k.split("@")[1]) for k in res.l1 if k.startswith("rerank@"))
        report["switch_margin"] = calibrate(res, margin_n, ns)
    return report


def write_report(report: dict[str, Any], res: StepResults, out_dir: str | Path) -> list[Path]:
    """report.json, error_vs_n.png and energy_hist.png under out_dir; returns the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "report.json"]
    paths[0].write_text(json.dumps(report, indent=2, allow_nan=True))
    paths += _plots(report, res, out)
    return paths


def _plots(report: dict[str, Any], res: StepResults, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    overall = report["overall"]["l1"]
    ns = sorted(int(k.split("@")[1]) for k in overall if k.startswith("rerank@"))
    held = report.get("switch_margin", {}).get("held_out")
    fig, axes = plt.subplots(1, 2 if held else 1, figsize=(12 if held else 6, 4), squeeze=False)
    ax = axes[0, 0]
    color = {"rerank": "C0", "oracle": "C1", "random": "C2", "margin": "C3"}  # same in both panels
    for kind, style in (("rerank", "o-"), ("oracle", "s--"), ("random", "^:")):
        mean = np.array([overall[f"{kind}@{n}"]["mean"] for n in ns])
        se = np.array([overall[f"{kind}@{n}"]["se"] for n in ns])
        ax.errorbar(ns, mean, yerr=se, fmt=style, color=color[kind], capsize=3, label=f"{kind}@N")
    ax.axhline(overall["base"]["mean"], color="k", lw=1, label="base (policy alone)")
    ax.set_title("Offline reranking error vs N (all episodes)")
    if held:
        # What `serve --switch-margin` would return, on the episodes the margin was not fitted on;
        # error bars are the episode-clustered SE of the gain over base.
        hx = axes[0, 1]
        n_m = report["switch_margin"]["n"]
        for kind, style in (("rerank", "o-"), ("margin", "D-"), ("oracle", "s--")):
            mean = np.array([held[f"{kind}@{n}"] for n in ns])
            err = np.array([held[f"margin_gain_se@{n}"] for n in ns]) if kind == "margin" else None
            label = f"served with margin (fitted at N={n_m})" if kind == "margin" else f"{kind}@N"
            hx.errorbar(ns, mean, yerr=err, fmt=style, color=color[kind], capsize=3, label=label)
        hx.axhline(held["base"], color="k", lw=1, label="base (policy alone)")
        hx.set_title("Held-out episodes (odd): switch margin")
    for a in axes[0]:
        a.set_xscale("log", base=2)
        a.set_xlabel("candidates N")
        a.set_ylabel("L1 error vs recorded chunk")
        a.legend()
    fig.tight_layout()
    p1 = out / "error_vs_n.png"
    fig.savefig(p1, dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    cand = res.candidate_energy.ravel()
    bins = np.histogram_bin_edges(np.r_[cand, res.expert_energy], bins=50).tolist()
    ax.hist(cand, bins=bins, density=True, alpha=0.5, label="candidates")
    ax.hist(res.expert_energy, bins=bins, density=True, alpha=0.6, label="recorded (expert) chunk")
    ax.set_xlabel("energy")
    ax.set_ylabel("density")
    ax.set_title("Energies: expert vs candidates")
    ax.legend()
    fig.tight_layout()
    p2 = out / "energy_hist.png"
    fig.savefig(p2, dpi=120)
    plt.close(fig)
    return [p1, p2]
