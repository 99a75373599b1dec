"""Closed-loop LIBERO through the real service: success with and without reranking.

Every setting runs the same episodes: for each task, the same fixed init states (0..K-1, or an
explicit held-out range such as 30-49) under the standard protocol (`libero.runner`), every chunk
from the server via `ServedController`, with the same request seeds. A setting is N candidates
per SelectAction (N = 1 being the base policy) and who picks among them:

  head     the server (energy argmin at its switch margin; with --switch-margins, one setting per
           margin sent with the requests: a sweep of the margin on the policy's own states)
  random   a uniform random one of the server's N: N without any scoring
  oracle   the one nearest the scripted expert's label from the current state: the most any head
           can reach with these candidates

The report gives success per task and overall with Wilson 95% intervals (small K makes normal
intervals useless near 0 and 1), episodes won and lost against N = 1 on the same init state with
the exact two-sided sign test on those discordant pairs, mean episode length, latency percentiles
seen by the client and reported by the server, and how often the head left the policy's chunk
(`reranked_share`) next to the rate its calibration measured on held-out demonstrations
(`calibrated_share`, from GetModelInfo, for settings at the server's margin): far above it, the
policy's own states are ones the switch margin was not fitted on.

Episodes are independent, so `workers` > 1 runs them in that many processes against the one
server, whose batcher then batches their requests; the report is the same, row for row, up to
the server batching (a batched policy forward may round differently from a single one).
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

from energy_rerank.checkpoint import SwitchExpectation
from energy_rerank.libero.selectors import SELECTORS

Z95 = 1.959964  # two-sided 95% normal quantile
NUM_INIT_STATES = 50  # fixed init states per LIBERO task

Setting = tuple[int, "float | None", str]  # (N, switch margin sent or None = the server's, selector)


@dataclass(frozen=True)
class ClosedLoopConfig:
    """Which episodes to run and how chunks are requested."""

    suite: str = "libero_object"  # LIBERO suite
    tasks: tuple[int, ...] = (0,)  # task ids within the suite
    episodes: int = 10  # per task and setting: init states 0..episodes-1 (unless init_states is given)
    init_states: tuple[int, ...] = ()  # the fixed init states run per task and setting; empty: 0..episodes-1
    ns: tuple[int, ...] = (1, 16, 64)  # candidate counts; 1 = base policy, no reranking
    # switch margins sent with each request, one setting per (N > 1, margin); None = the server's
    margins: tuple[float | None, ...] = (None,)
    # who picks among the N (libero.selectors.SELECTORS): head = the server, random, oracle = nearest the expert
    selectors: tuple[str, ...] = ("head",)
    max_steps: int | None = None  # control-step cap; None = the suite's standard max steps
    prefetch_fraction: float = 0.0  # broker prefetch (0 = request when the chunk is used up)
    sigma_scale: float = 1.0  # multiplies the server sampler's noise sigmas
    seed: int = 0  # request seeds derive from it (same seeds across settings)
    workers: int = 1  # episode processes against the one server (its batcher batches their requests)
    video_episodes: int = 0  # first episodes per task and setting filmed (needs video_dir and imageio)
    video_dir: str = ""  # where MP4s go; empty = no video
    video_size: int = 128  # camera resolution for filmed episodes

    def __post_init__(self) -> None:
        if self.episodes < 1 or not self.tasks or not self.ns or min(self.ns) < 1:
            raise ValueError(f"need episodes >= 1, some tasks and N >= 1; got {self}")
        if not self.margins or any(m is not None and not m >= 0 for m in self.margins):
            raise ValueError(
                f"switch margins must be >= 0 (inf: never switch) or None (the server's); got {self.margins}"
            )
        bad = [s for s in self.selectors if s not in SELECTORS]
        if not self.selectors or bad or len(set(self.selectors)) < len(self.selectors):
            raise ValueError(f"selectors must be distinct ones of {SELECTORS}; got {self.selectors}")
        if "oracle" in self.selectors and self.prefetch_fraction > 0:
            raise ValueError("the oracle labels the state a request observed: it needs prefetch_fraction 0")
        if len(set(self.init_states)) < len(self.init_states) or any(
            not 0 <= i < NUM_INIT_STATES for i in self.init_states
        ):
            raise ValueError(
                f"init_states must be distinct ones of 0..{NUM_INIT_STATES - 1}; got {self.init_states}"
            )
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")
        if len(set(self.settings())) < len(self.settings()):
            raise ValueError(f"a setting repeats: N {self.ns}, margins {self.margins}")

    def inits(self) -> tuple[int, ...]:
        """The init states every task and setting runs, in order."""
        return self.init_states or tuple(range(self.episodes))

    def settings(self) -> list[Setting]:
        """(N, margin, selector) per setting, in run order. N = 1 runs once: with one candidate there
        is nothing to switch to or pick, whatever the margin or selector. Margins are the head's:
        random and oracle ignore energies."""
        out: list[Setting] = []
        for n in self.ns:
            if n == 1:
                out.append((1, None, "head"))
                continue
            for selector in self.selectors:
                out += [(n, m, selector) for m in (self.margins if selector == "head" else (None,))]
        return out


def setting_label(n: int, margin: float | None, selector: str = "head") -> str:
    """ "N=64", "N=64 M=1.5" (a setting that sends its own switch margin), "N=64 random", "N=64 oracle"."""
    if selector != "head":
        return f"N={n} {selector}"
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


def sign_test(wins: int, losses: int) -> float:
    """Exact two-sided sign test on discordant pairs: P(a split at least this uneven | p = 1/2).

    Ties (both settings succeed or both fail) carry no information about which is better and are
    left out before calling. 3 wins, 0 losses -> 0.25; 0 discordant pairs -> 1.
    """
    if wins < 0 or losses < 0:
        raise ValueError(f"wins and losses are counts, got {wins}, {losses}")
    n, k = wins + losses, min(wins, losses)
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)


def run_closed_loop(
    client: Any,
    config: ClosedLoopConfig,
    on_task_done: Callable[[dict[str, Any]], Any] | None = None,
    connect: Callable[[], Any] | None = None,
) -> dict[str, Any]:
    """All tasks x settings x init states -> the report dict (see `summarize`). `on_task_done` gets the
    report so far after every task, so a long run that is stopped still leaves its results. With
    config.workers > 1, `connect` (picklable, no arguments) opens each worker process's own client."""
    from tqdm import tqdm

    if config.workers > 1 and connect is None:
        raise ValueError("workers > 1 needs connect: a picklable factory of each worker's client")
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
    units = [
        (task, setting, position, init)
        for task in config.tasks
        for setting in config.settings()
        for position, init in enumerate(config.inits())
    ]  # same init states and request seeds in every setting
    rows: list[dict[str, Any]] = []
    left = {task: sum(u[0] == task for u in units) for task in config.tasks}
    bar = tqdm(total=len(units), desc="closed-loop", unit="ep")
    t0 = time.perf_counter()

    def finished(row: dict[str, Any]) -> None:
        rows.append(row)
        bar.update()
        mine = [
            r
            for r in rows
            if (r["n"], r["margin"], r["selector"]) == (row["n"], row["margin"], row["selector"])
        ]
        label = setting_label(row["n"], row["margin"], row["selector"])
        bar.set_postfix(
            task=row["task"], setting=label, success=f"{sum(r['success'] for r in mine)}/{len(mine)}"
        )
        left[row["task"]] -= 1
        if on_task_done is not None and left[row["task"]] == 0:
            on_task_done(
                summarize(_ordered(rows, units), config, time.perf_counter() - t0, done=False, server=server)
            )

    if config.workers == 1:
        sims: _TaskSims | None = None
        try:
            for task, setting, position, init in units:
                if sims is None or sims.task != task:
                    if sims is not None:
                        sims.close()
                    sims = _TaskSims(config, task)
                finished(_episode(client, sims, config, setting, position, init))
        finally:
            if sims is not None:
                sims.close()
    else:
        assert connect is not None  # checked above
        _run_parallel(config, connect, units, finished)
    bar.close()
    return summarize(_ordered(rows, units), config, time.perf_counter() - t0, server=server)


def _ordered(rows: list[dict[str, Any]], units: list[Any]) -> list[dict[str, Any]]:
    """Rows in run order (task, setting, init state), however the workers finished them."""
    order = {(t, *s, i): k for k, (t, s, _, i) in enumerate(units)}
    return sorted(rows, key=lambda r: order[(r["task"], r["n"], r["margin"], r["selector"], r["episode"])])


class _TaskSims:
    """The simulators one task needs: the rollout's, a camera one for filming, a scratch one for labels."""

    def __init__(self, config: ClosedLoopConfig, task: int) -> None:
        from energy_rerank.libero.sim import LiberoSim, SimConfig

        self.task = task
        self.sim = LiberoSim(SimConfig(suite=config.suite, task_id=task))
        self.filming = _video_sim(config, task)
        self.scratch = (
            LiberoSim(SimConfig(suite=config.suite, task_id=task)) if "oracle" in config.selectors else None
        )

    def close(self) -> None:
        for sim in (self.sim, self.filming, self.scratch):
            if sim is not None:
                sim.close()


def _episode(
    client: Any, sims: _TaskSims, config: ClosedLoopConfig, setting: Setting, position: int, init: int
) -> dict[str, Any]:
    """One episode of one setting from one init state -> its report row."""
    from energy_rerank.libero.controller import Chooser, ControllerConfig, ServedController
    from energy_rerank.libero.runner import run_episode
    from energy_rerank.libero.selectors import OracleChooser, random_choice

    n, margin, selector = setting
    film = sims.filming is not None and position < config.video_episodes
    sim = sims.filming if film and sims.filming is not None else sims.sim
    chooser: Chooser | None = None
    if selector == "random":
        chooser = random_choice
    elif selector == "oracle":
        assert sims.scratch is not None
        chooser = OracleChooser(sim, sims.scratch)
    ctrl = ServedController(
        client,
        ControllerConfig(
            num_candidates=n,
            prefetch_fraction=config.prefetch_fraction,
            sigma_scale=config.sigma_scale,
            seed=config.seed,
            switch_margin=margin,
        ),
        episode_key=f"{config.suite}/{sims.task}/{init}",  # same request seeds in every setting
        chooser=chooser,
    )
    ctrl.record_frames = film
    try:
        res = run_episode(sim, ctrl, init, max_steps=config.max_steps, record=False)
    finally:
        ctrl.close()
    if film:
        tag = setting_label(n, margin, selector).replace("N=", "n").replace(" M=", "_m").replace(" ", "_")
        _write_video(ctrl.frames, Path(config.video_dir) / f"task{sims.task}_{tag}_ep{init}.mp4")
    return _row(sims.task, setting, init, res.success, res.steps, ctrl)


# Worker processes (spawned: a forked gRPC channel is unusable) keep their client and the current
# task's simulators between episodes.
_WORKER: dict[str, Any] = {}


def _worker_start(connect: Callable[[], Any], config: ClosedLoopConfig) -> None:
    _WORKER.update(client=connect(), config=config, sims=None)


def _worker_episodes(units: list[Any]) -> list[dict[str, Any]]:
    rows = []
    for task, setting, position, init in units:
        sims = _WORKER["sims"]
        if sims is None or sims.task != task:
            if sims is not None:
                sims.close()
            sims = _WORKER["sims"] = _TaskSims(_WORKER["config"], task)
        rows.append(_episode(_WORKER["client"], sims, _WORKER["config"], setting, position, init))
    return rows


def jobs_for_workers(units: list[Any], workers: int) -> list[list[Any]]:
    """Whole tasks per job, so that each task's simulators are built once (about 2 s the first in a
    process, 0.4 s later ones); with fewer tasks than workers, each task's episodes are split into
    about workers / tasks interleaved jobs."""
    tasks = list(dict.fromkeys(u[0] for u in units))
    per_task = max(1, -(-workers // len(tasks)))  # ceil
    jobs = []
    for task in tasks:
        mine = [u for u in units if u[0] == task]
        jobs += [job for job in (mine[k::per_task] for k in range(per_task)) if job]
    return jobs


def _run_parallel(
    config: ClosedLoopConfig,
    connect: Callable[[], Any],
    units: list[Any],
    finished: Callable[[dict[str, Any]], None],
) -> None:
    from concurrent.futures import as_completed

    from energy_rerank.worker_pool import spawn_pool

    with spawn_pool(config.workers, initializer=_worker_start, initargs=(connect, config)) as pool:
        futures = [pool.submit(_worker_episodes, job) for job in jobs_for_workers(units, config.workers)]
        try:
            for future in as_completed(futures):
                for row in future.result():
                    finished(row)
        except BaseException:
            for future in futures:
                future.cancel()
            raise


def _row(task: int, setting: Setting, init: int, success: bool, steps: int, ctrl: Any) -> dict[str, Any]:
    n, margin, selector = setting
    log = ctrl.log
    return {
        "task": task,
        "n": n,
        "margin": margin,  # the switch margin the requests sent; None = the server's
        "selector": selector,  # who picked among the N: head (the server), random, oracle
        "episode": init,  # the fixed init state it started from
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
    """Per setting: overall and per-task success, won / lost against N = 1 with the sign test,
    lengths, latency; plus the raw episode rows and `server` (model version, scorer, switch margin:
    what was measured)."""
    done_tasks = [t for t in config.tasks if any(r["task"] == t for r in rows)]
    calibrated = calibrated_switch_rates(server or {})
    base = {(r["task"], r["episode"]): r["success"] for r in rows if r["n"] == 1}
    settings = {}
    for n, margin, selector in config.settings():
        mine = [r for r in rows if (r["n"], r["margin"], r["selector"]) == (n, margin, selector)]
        # the calibration was measured at the server's margin: it predicts nothing at another
        at_calibrated = margin is None or (calibrated is not None and margin == calibrated.margin)
        settings[setting_label(n, margin, selector)] = {
            "n_candidates": n,
            "switch_margin": margin,  # None: the server's (server.switch_margin)
            "selector": selector,
            "overall": _success(mine),
            "per_task": {str(t): _success([r for r in mine if r["task"] == t]) for t in done_tasks},
            "vs_base": None if n == 1 or not base else _paired(mine, base),
            "latency": {
                key: _latency([x for r in mine for x in r[f"{key}_seconds"]])
                for key in ("client", "server", "inference")
            },
            "reranked_share": float(np.mean([r["reranked_share"] for r in mine])) if mine else 0.0,
            # what the head's calibration expects reranked_share to be; far below the measured
            # share, the policy's own states are ones the margin was not fitted on
            "calibrated_share": calibrated.at(n)
            if calibrated is not None and n > 1 and at_calibrated and selector == "head"
            else None,
            "fallbacks": int(sum(r["fallbacks"] for r in mine)),
        }
    episodes = [{k: v for k, v in r.items() if not k.endswith("_seconds")} for r in rows]
    return {
        "config": asdict(config),
        "server": server or {},
        "seconds": round(seconds, 1),
        # episodes per hour of wall time over the whole run (all settings)
        "episodes_per_hour": round(3600 * len(rows) / seconds, 1) if seconds > 0 else None,
        "complete": done,  # False in the reports written after each task of a run still going
        "tasks_done": done_tasks,
        "settings": settings,
        "episodes": episodes,
    }


def _paired(rows: list[dict[str, Any]], base: dict[tuple[int, int], bool]) -> dict[str, Any]:
    """Episodes won / lost against N = 1 from the same init state (and request seeds), sign test on those."""
    pairs = [
        (r["success"], base[(r["task"], r["episode"])]) for r in rows if (r["task"], r["episode"]) in base
    ]
    won = sum(mine and not theirs for mine, theirs in pairs)
    lost = sum(theirs and not mine for mine, theirs in pairs)
    return {"pairs": len(pairs), "won": won, "lost": lost, "sign_test_p": sign_test(won, lost)}


def calibrated_switch_rates(server: dict[str, Any]) -> SwitchExpectation | None:
    """The served head's calibrated switch rates, from a report's `server` section."""
    rates = server.get("calibrated_switch_rates") or {}
    if not rates:
        return None
    ns = sorted(int(k) for k in rates)
    return SwitchExpectation(
        float(server["switch_margin"]), tuple(ns), tuple(float(rates[str(k)]) for k in ns)
    )


def write_report(report: dict[str, Any], out: str | Path) -> list[Path]:
    """report.json, success.png (success per task per setting) and success_vs_n.png (success against
    N per selector), Wilson error bars, under `out`. Each file is replaced whole (written beside, then
    renamed): a run stopped while writing leaves the previous report, never half of one."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "report.json"
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_text(json.dumps(report, indent=1))
    tmp.replace(path)
    return [
        path,
        plot_success(report, out / "success.png"),
        plot_success_vs_n(report, out / "success_vs_n.png"),
    ]


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
    _save(fig, path)
    return path


def plot_success_vs_n(report: dict[str, Any], path: Path) -> Path:
    """Overall success against N, one line per selector (and head margin), all starting at N = 1."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    settings = report["settings"]
    base = next((s for s in settings.values() if s["n_candidates"] == 1), None)
    lines: dict[str, list[dict[str, Any]]] = {}
    for label, s in settings.items():
        if s["n_candidates"] > 1:
            name = label.split(" ", 1)[1] if " " in label else "head"
            lines.setdefault(name, []).append(s)
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, points in lines.items():
        points = ([base] if base is not None else []) + sorted(points, key=lambda s: s["n_candidates"])
        n = np.array([s["n_candidates"] for s in points])
        rate = np.array([s["overall"]["rate"] for s in points])
        lo = np.array([s["overall"]["wilson95"][0] for s in points])
        hi = np.array([s["overall"]["wilson95"][1] for s in points])
        err = np.clip(np.stack([rate - lo, hi - rate]), 0, None)  # [2, P]
        ax.errorbar(n, rate, yerr=err, marker="o", capsize=3, label=name)
    if base is not None:
        ax.axhline(base["overall"]["rate"], color="grey", lw=0.8, ls="--", label="N = 1 (policy alone)")
    ax.set_xscale("log", base=2)
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("candidates N")
    ax.set_ylabel("success rate (Wilson 95%)")
    episodes = sum(s["overall"]["episodes"] for s in settings.values()) // max(len(settings), 1)
    ax.set_title(f"{report['config']['suite']}: closed loop, {episodes} episodes per setting")
    ax.legend(title="picked by")
    fig.tight_layout()
    _save(fig, path)
    return path


def _save(fig: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    tmp = path.with_name(f".{path.stem}.partial{path.suffix}")  # the suffix tells matplotlib the format
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)
