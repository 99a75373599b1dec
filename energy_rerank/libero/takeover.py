"""Can the scripted expert finish from where the served policy goes? The check on-policy labels need.

For each task and init state the served policy runs one episode through the real server (its
own chunk, N = 1); every `every`-th state it visits is then restored in a scratch simulator and
the expert takes over there (`relabel.expert_takeover`) with the suite's full step budget. The
report gives, per task and overall, the share of take-overs that succeed (Wilson 95%), by the
phase the expert inferred, and whether the policy's own episode had succeeded.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from energy_rerank.libero.protocol import TRAIN_INIT_STATES


@dataclass(frozen=True)
class TakeoverConfig:
    """Which policy states the expert takes over from."""

    suite: str = "libero_object"  # LIBERO suite
    tasks: tuple[int, ...] = (0,)  # task ids within the suite
    init_states: tuple[int, ...] = TRAIN_INIT_STATES[:3]  # one policy episode from each, per task
    every: int = 40  # take over at visited steps every, 2 * every, ... (step 0 is the expert's own start)
    max_steps: int | None = None  # the expert's budget from each state; None = the suite's max steps
    seed: int = 0  # request seeds of the policy's episodes

    def __post_init__(self) -> None:
        if self.every < 1 or not self.tasks or not self.init_states:
            raise ValueError(f"need every >= 1, some tasks and init states; got {self}")


def run_takeover_check(client: Any, config: TakeoverConfig) -> dict[str, Any]:
    """Policy episodes through `client`, expert take-overs from their states -> the report dict."""
    from tqdm import tqdm

    from energy_rerank.evaluation.closed_loop import wilson
    from energy_rerank.libero.controller import ControllerConfig, ServedController
    from energy_rerank.libero.relabel import expert_takeover
    from energy_rerank.libero.runner import run_episode
    from energy_rerank.libero.sim import LiberoSim, SimConfig

    rows: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    bar = tqdm(total=len(config.tasks) * len(config.init_states), desc="take-over", unit="ep")
    for task in config.tasks:
        sim = LiberoSim(SimConfig(suite=config.suite, task_id=task))
        scratch = LiberoSim(SimConfig(suite=config.suite, task_id=task))
        budget = config.max_steps or sim.config.max_steps
        try:
            for init in config.init_states:
                ctrl = ServedController(
                    client, ControllerConfig(seed=config.seed), episode_key=f"{config.suite}/{task}/{init}"
                )
                try:
                    res = run_episode(sim, ctrl, init)
                finally:
                    ctrl.close()
                assert res.episode is not None and res.episode.states is not None
                for t in range(config.every, res.steps, config.every):
                    out = expert_takeover(scratch, res.episode.states[t], budget)
                    rows.append(
                        {
                            "task": task,
                            "init_state": init,
                            "step": t,
                            "policy_success": res.success,  # how the policy's own episode ended
                            "phase": out.phase,  # the phase the expert read from the state
                            "success": out.success,
                            "steps": out.steps,
                        }
                    )
                bar.update()
                done = [r for r in rows if r["task"] == task]
                bar.set_postfix(task=task, takeovers=f"{sum(r['success'] for r in done)}/{len(done)}")
        finally:
            sim.close()
            scratch.close()
    bar.close()

    def rate(subset: list[dict[str, Any]]) -> dict[str, Any]:
        k, n = sum(r["success"] for r in subset), len(subset)
        return {"successes": k, "takeovers": n, "rate": k / n if n else None, "wilson95": list(wilson(k, n))}

    phases = Counter(r["phase"] for r in rows)
    return {
        "config": asdict(config),
        "seconds": round(time.perf_counter() - t0, 1),
        "overall": rate(rows),
        "per_task": {str(t): rate([r for r in rows if r["task"] == t]) for t in config.tasks},
        "per_phase": {p: rate([r for r in rows if r["phase"] == p]) for p in sorted(phases)},
        "from_failed_policy_episodes": rate([r for r in rows if not r["policy_success"]]),
        "takeovers": rows,
    }


def write_takeover_report(report: dict[str, Any], out: str | Path) -> Path:
    """takeover.json under `out`, written beside and renamed (never half a file)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "takeover.json"
    tmp = path.with_name(f".{path.name}.partial")
    tmp.write_text(json.dumps(report, indent=1))
    tmp.replace(path)
    return path
