"""Closed-loop LIBERO through the real service: success with and without reranking.

Every setting (N candidates per SelectAction, N = 1 being the base policy; and, when asked, a
switch margin per request, which sweeps the margin against closed-loop success rather than
against held-out demonstrations) runs the same episodes: for each task, init states 0..K-1 under
the standard protocol (`libero.runner`), every chunk from the server via `ServedController`.
The report gives success per task and overall with Wilson 95% intervals (small K makes normal
intervals useless near 0 and 1), mean episode length, and latency percentiles seen by the client
and reported by the server, and how often the head left the policy's chunk (`reranked_share`)
next to the rate its calibration measured on held-out demonstrations (`calibrated_share`, from
GetModelInfo, for settings at the server's margin): far above it, the policy's own states are
ones the switch margin was not fitted on.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from energy_rerank.evaluation.margin import SwitchExpectation

Z95 = 1.959964  # two-sided 95% normal quantile


@dataclass(frozen=True)
class ClosedLoopConfig:
    """Which episodes to run and how chunks are requested."""

    suite: str = "libero_object"  # LIBERO suite
    tasks: tuple[int, ...] = (0,)  # task ids within the suite
    episodes: int = 10  # per task and setting: init states 0..episodes-1
    ns: tuple[int, ...] = (1, 16, 64)  # candidate counts; 1 = base policy, no reranking
    # switch margins sent with each request, one setting per (N > 1, margin); None = the server's
    margins: tuple[float | None, ...] = (None,)
    max_steps: int | None = None  # control-step cap; None = the suite's standard max steps
    prefetch_fraction: float = 0.0  # broker prefetch (0 = request when the chunk is used up)
    sigma_scale: float = 1.0  # multiplies the server sampler's noise sigmas
    seed: int = 0  # request seeds derive from it (same seeds across settings)
    video_episodes: int = 0  # first episodes per task and setting filmed (needs video_dir and imageio)
    video_dir: str = ""  # where MP4s go; empty = no video
    video_size: int = 128  # camera resolution for filmed episodes

    def __post_init__(self) -> None:
        if self.episodes < 1 or not self.tasks or not self.ns or min(self.ns) < 1:
            raise ValueError(f"need episodes >= 1, some tasks and N >= 1; got {self}")
        if not self.margins or any(m is not None and not m >= 0 for m in self.margins):
            raise ValueError(f"switch margins must be >= 0 (inf: never switch) or None (the server's); got {self.margins}")
        if len(set(self.settings())) < len(self.settings()):
            raise ValueError(f"a setting repeats: N {self.ns}, margins {self.margins}")

    def settings(self) -> list[tuple[int, float | None]]:
        """(N, margin) per setting, in run order. N = 1 runs once: with one candidate there is
        nothing to switch to, whatever the margin."""
        return [(n, m) for n in self.ns for m in ((None,) if n == 1 else self.margins)]


def setting_label(n: int, margin: float | None) -> str:
    """"N=64", or "N=64 M=1.5" for a setting that sends its own switch margin."""
    return f"N={n}" if margin is None else f"N={n} M={margin:g}"


def wilson(successes: int, trials: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion."""
    if trials == 0:
        return (0.0, 1.0)
    p = successes / trials
    denom = 1 + z * z / trials
    center = (p + z * z / (2 * trials)) / denom
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denom
    return (max(0.0, center - half), min(1.0, center + half))


def run_closed_loop(
    client: Any, config: ClosedLoopConfig, on_task_done: Callable[[dict[str, Any]], Any] | None = None
) -> dict[str, Any]:
    """All tasks x settings x episodes -> the report dict (see `summarize`). `on_task_done` gets the
    report so far after every task, so a long run that is stopped still leaves its results."""
    from tqdm import tqdm

    from energy_rerank.libero.controller import ControllerConfig, ServedController
    from energy_rerank.libero.runner import run_episode
    from energy_rerank.libero.sim import LiberoSim, SimConfig

    info = client.info()  # what served the run: a report must say which head and margin it measured
    server = {
        "model_version": info.model_version,
        "scorer_backend": info.scorer_backend,
        "switch_margin": info.switch_margin,
        "sampler_sigmas": list(info.sampler_sigmas),
        "gripper_mode": info.gripper_mode,
        "default_candidates": info.default_candidates,
        # N -> the head's held-out switch rate at switch_margin (empty: not calibrated)
        "calibrated_switch_rates": {str(k): v for k, v in sorted(info.calibrated_switch_rates.items())},
    }
    rows: list[dict[str, Any]] = []
    bar = tqdm(total=len(config.tasks) * len(config.settings()) * config.episodes, desc="closed-loop", unit="ep")
    t0 = time.perf_counter()
    for task in config.tasks:
        sim = LiberoSim(SimConfig(suite=config.suite, task_id=task))
        filming = _video_sim(config, task)
        try:
            for n, margin in config.settings():
                ok = 0
                for e in range(config.episodes):
                    film = filming is not None and e < config.video_episodes
                    ctrl = ServedController(
                        client,
                        ControllerConfig(
                            num_candidates=n,
                            prefetch_fraction=config.prefetch_fraction,
                            sigma_scale=config.sigma_scale,
                            seed=config.seed,
                            switch_margin=margin,
                        ),
                        episode_key=f"{config.suite}/{task}/{e}",  # same request seeds in every setting
                    )
                    ctrl.record_frames = film
                    try:
                        res = run_episode(
                            filming if film else sim, ctrl, e, max_steps=config.max_steps, record=False
                        )
                    finally:
                        ctrl.close()
                    ok += res.success
                    rows.append(_row(task, n, margin, e, res.success, res.steps, ctrl))
                    if film:
                        m = "" if margin is None else f"_m{margin:g}"
                        _write_video(ctrl.frames, Path(config.video_dir) / f"task{task}_n{n}{m}_ep{e}.mp4")
                    bar.update()
                    bar.set_postfix(task=task, setting=setting_label(n, margin), success=f"{ok}/{e + 1}")
        finally:
            sim.close()
            if filming is not None:
                filming.close()
        if on_task_done is not None:
            on_task_done(summarize(rows, config, time.perf_counter() - t0, done=False, server=server))
    bar.close()
    return summarize(rows, config, time.perf_counter() - t0, server=server)


def _row(task: int, n: int, margin: float | None, episode: int, success: bool, steps: int, ctrl: Any) -> dict[str, Any]:
    log = ctrl.log
    return {
        "task": task,
        "n": n,
        "margin": margin,  # the switch margin the requests sent; None = the server's
        "episode": episode,
        "success": bool(success),
        "steps": int(steps),
        "requests": len(log.client_seconds),
        "client_seconds": log.client_seconds,
        "server_seconds": log.server_seconds,
        "inference_seconds": log.inference_seconds,
        "reranked_share": float(np.mean([c != 0 for c in log.chosen])) if log.chosen else 0.0,
        "fallbacks": log.fallbacks,
    }


def _video_sim(config: ClosedLoopConfig, task: int) -> Any:
    """A second, camera-rendering sim for filmed episodes (cameras cost ~0.1 s a step)."""
    if not (config.video_dir and config.video_episodes):
        return None
    from energy_rerank.libero.sim import LiberoSim, SimConfig

    return LiberoSim(SimConfig(suite=config.suite, task_id=task, image_size=config.video_size))


def _write_video(frames: Sequence[np.ndarray], path: Path) -> None:
    import imageio.v2 as imageio  # optional; checked by the CLI before any episode runs

    path.parent.mkdir(parents=True, exist_ok=True)
    imageio.mimsave(str(path), list(frames), fps=20)


def _latency(values: list[float]) -> dict[str, float]:
    v = np.asarray([x for x in values if np.isfinite(x)], np.float64) * 1e3
    if not len(v):
        return {"count": 0}
    pct = {f"p{q}_ms": float(np.percentile(v, q)) for q in (50, 90, 99)}
    return {"count": int(len(v)), "mean_ms": float(v.mean()), **pct, "max_ms": float(v.max())}


def _success(rows: list[dict[str, Any]]) -> dict[str, Any]:
    k, n = sum(r["success"] for r in rows), len(rows)
    lo, hi = wilson(k, n)
    steps = [r["steps"] for r in rows]
    won = [r["steps"] for r in rows if r["success"]]
    return {
        "successes": k,
        "episodes": n,
        "rate": k / n if n else float("nan"),
        "wilson95": [lo, hi],
        "mean_length": float(np.mean(steps)) if steps else float("nan"),
        "mean_length_success": float(np.mean(won)) if won else float("nan"),
    }


def summarize(
    rows: list[dict[str, Any]],
    config: ClosedLoopConfig,
    seconds: float = 0.0,
    done: bool = True,
    server: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Per setting: overall and per-task success, lengths, latency; plus the raw episode rows and
    `server` (model version, scorer, switch margin: what was measured)."""
    done_tasks = [t for t in config.tasks if any(r["task"] == t for r in rows)]
    calibrated = calibrated_switch_rates(server or {})
    settings = {}
    for n, margin in config.settings():
        mine = [r for r in rows if r["n"] == n and r["margin"] == margin]
        # the calibration was measured at the server's margin: it predicts nothing at another
        at_calibrated = margin is None or (calibrated is not None and margin == calibrated.margin)
        settings[setting_label(n, margin)] = {
            "n_candidates": n,
            "switch_margin": margin,  # None: the server's (server.switch_margin)
            "overall": _success(mine),
            "per_task": {str(t): _success([r for r in mine if r["task"] == t]) for t in done_tasks},
            "latency": {
                key: _latency([x for r in mine for x in r[f"{key}_seconds"]])
                for key in ("client", "server", "inference")
            },
            "reranked_share": float(np.mean([r["reranked_share"] for r in mine])) if mine else 0.0,
            # what the head's calibration expects reranked_share to be; far below the measured
            # share, the policy's own states are ones the margin was not fitted on
            "calibrated_share": calibrated.at(n) if calibrated is not None and n > 1 and at_calibrated else None,
            "fallbacks": int(sum(r["fallbacks"] for r in mine)),
        }
    episodes = [{k: v for k, v in r.items() if not k.endswith("_seconds")} for r in rows]
    return {
        "config": asdict(config),
        "server": server or {},
        "seconds": round(seconds, 1),
        "complete": done,  # False in the reports written after each task of a run still going
        "tasks_done": done_tasks,
        "settings": settings,
        "episodes": episodes,
    }


def calibrated_switch_rates(server: dict[str, Any]) -> SwitchExpectation | None:
    """The served head's calibrated switch rates, from a report's `server` section."""
    rates = server.get("calibrated_switch_rates") or {}
    if not rates:
        return None
    ns = sorted(int(k) for k in rates)
    return SwitchExpectation(float(server["switch_margin"]), tuple(ns), tuple(float(rates[str(k)]) for k in ns))


def write_report(report: dict[str, Any], out: str | Path) -> list[Path]:
    """report.json and success.png (success per task per N, Wilson error bars) under `out`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "report.json"
    path.write_text(json.dumps(report, indent=1))
    return [path, plot_success(report, out / "success.png")]


def plot_success(report: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    settings = report["settings"]
    tasks = [str(t) for t in report["tasks_done"]]
    groups = [*tasks, "all"]
    width = 0.8 / max(len(settings), 1)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(groups) * max(len(settings), 1) / 2), 4))
    x = np.arange(len(groups))
    for i, (label, s) in enumerate(settings.items()):
        cells = [s["per_task"][t] for t in tasks] + [s["overall"]]
        rate = np.array([c["rate"] for c in cells])
        lo = np.array([c["wilson95"][0] for c in cells])
        hi = np.array([c["wilson95"][1] for c in cells])
        err = np.clip(np.stack([rate - lo, hi - rate]), 0, None)  # [2, G]; rounding at 0/1 can go below 0
        ax.bar(x + (i - (len(settings) - 1) / 2) * width, rate, width, yerr=err, capsize=2, label=label)
    ax.set_xticks(x, [f"task {g}" if g != "all" else "all" for g in groups], rotation=45, ha="right")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("success rate (Wilson 95%)")
    ax.set_title(
        f"{report['config']['suite']}: closed loop, {report['config']['episodes']} episodes per task"
    )
    ax.legend(title="candidates")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
