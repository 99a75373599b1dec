"""On-policy rollouts with expert labels: what a head learns from where the policy actually goes.

The served policy runs through the real server (N candidates, the request's switch margin) from
chosen init states; at every control step the scripted expert labels the state the robot is in
(`relabel.expert_label` in a scratch simulator, with the rollout's gripper command), so each
step carries both the executed action and the chunk the expert would have executed from there.
With `expert_share` > 0 the expert also steers a share of the chunks (DAgger's mixture): the
candidate nearest its label is executed instead of the server's pick.
One HDF5 per task in the project's format (`rollouts.hdf5`), readable by `load_windows`:

  data/demo_i/actions            [T, 7] the actions executed
  data/demo_i/states             [T, S] MuJoCo states before each action (replayable)
  data/demo_i/rewards, dones     [T] 1 on the success step (all 0 for a failed episode)
  data/demo_i/obs/...            the low-dim observation keys, plus
  data/demo_i/obs/expert_label   [T, H, 7] the expert's chunk from every (label_every-th) visited
                                 state; NaN where a step was not labelled
  data attributes                init_states (one per demo), successes (one per demo), the server's
                                 model version, N and margin

Each task is a stage: its file is written whole (beside, then renamed) when its episodes are
done, and a rerun skips tasks whose file exists, so a stopped collection resumes where it was.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from energy_rerank.libero.protocol import INIT_STATES_ATTR, TRAIN_INIT_STATES
from energy_rerank.rollouts.episode import Episode
from energy_rerank.rollouts.windows import LABEL_KEY  # the expert's chunk [H, 7] at every step

REPORT_FILE = "collect_report.json"


@dataclass(frozen=True)
class CollectConfig:
    """Which rollouts to collect and how chunks are requested."""

    suite: str = "libero_object"  # LIBERO suite
    tasks: tuple[int, ...] = (0,)  # task ids within the suite
    init_states: tuple[int, ...] = TRAIN_INIT_STATES  # one rollout from each, per task
    num_candidates: int = 1  # N per SelectAction; 1 = the policy's own chunk
    switch_margin: float | None = None  # sent with every request; None = the server's
    seed: int = 0  # request seeds derive from (seed, task, init state)
    max_steps: int | None = None  # control-step cap; None = the suite's standard max steps
    # label every k-th visited state (the expert's H steps from each label cost about as much as
    # the rollout's own steps); the other steps' labels are NaN and make no training window
    label_every: int = 1
    # share of chunk requests on which the expert steers: the candidate nearest its label replaces
    # the server's pick (DAgger's beta). The robot then visits states between where it goes alone
    # and where a good reranker takes it, the states a head must rank well in to keep succeeding.
    # 0 = the served robot alone; > 0 needs N > 1 (something to choose from)
    expert_share: float = 0.0

    def __post_init__(self) -> None:
        if not self.tasks or not self.init_states or self.num_candidates < 1 or self.label_every < 1:
            raise ValueError(f"need some tasks, init states, N >= 1 and label_every >= 1; got {self}")
        if self.switch_margin is not None and not self.switch_margin >= 0:
            raise ValueError(f"switch_margin must be >= 0 (inf: never switch), got {self.switch_margin}")
        if not 0.0 <= self.expert_share <= 1.0:
            raise ValueError(f"expert_share must be in [0, 1], got {self.expert_share}")
        if self.expert_share > 0 and self.num_candidates < 2:
            raise ValueError(f"expert_share {self.expert_share} needs num_candidates >= 2 to choose among")


class _Labelling:
    """chunk_fn wrapper: labels the rollout's current state, then asks the served controller."""

    def __init__(self, inner: Any, rollout: Any, scratch: Any, chunk_len: int, every: int = 1) -> None:
        self.inner, self.rollout, self.scratch, self.chunk_len = inner, rollout, scratch, chunk_len
        self.every = every  # label every k-th step, NaN between
        self.labels: list[np.ndarray] = []  # [H, 7] per control step

    def __call__(self, obs: Any) -> np.ndarray:
        if len(self.labels) % self.every:
            self.labels.append(np.full((self.chunk_len, 7), np.nan, np.float32))
        else:
            self.labels.append(self._label())
        return np.asarray(self.inner(obs))[:1]  # one action per call: a label for every step

    def current_label(self) -> np.ndarray:
        """The expert's chunk [H, 7] from the current state (this step's label, taken if it has none)."""
        last = self.labels[-1]
        return last if np.isfinite(last).all() else self._label()

    def _label(self) -> np.ndarray:
        from energy_rerank.libero.relabel import expert_label

        state, command = self.rollout.get_state(), self.rollout.gripper_command
        return expert_label(self.scratch, state, self.chunk_len, gripper_command=command)


class _ExpertSteers:
    """Chooser: on a `share` of requests (drawn from the request seed, so reruns repeat) the
    candidate nearest the expert's label of the current state, else the server's own pick."""

    def __init__(self, share: float) -> None:
        self.share = share
        self.labelling: _Labelling | None = None  # set once the labelling wrapper exists
        self.steered = 0  # requests the expert steered

    def __call__(self, candidates: np.ndarray, seed: int) -> int | None:
        from energy_rerank.libero.selectors import nearest_candidate

        if self.labelling is None or np.random.default_rng([seed, 1]).random() >= self.share:
            return None
        self.steered += 1
        return nearest_candidate(candidates, self.labelling.current_label())


def collect(
    client: Any,
    config: CollectConfig,
    out_dir: str | Path,
    workers: int = 1,
    connect: Callable[[], Any] | None = None,
) -> dict[str, Any]:
    """Collect every task not yet on disk under out_dir; returns (and writes) the report. With
    workers > 1 whole tasks run in that many processes against the one server (its batcher batches
    their requests); `connect` (picklable, no arguments) opens each worker's own client."""
    from tqdm import tqdm

    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if workers > 1 and connect is None:
        raise ValueError("workers > 1 needs connect: a picklable factory of each worker's client")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    info = client.info()
    report_path = out / REPORT_FILE
    report: dict[str, Any] = json.loads(report_path.read_text()) if report_path.is_file() else {}
    report.update(config=asdict(config), model_version=info.model_version)
    tasks: dict[str, Any] = report.setdefault("tasks", {})
    todo = [t for t in config.tasks if not (out / _task_file(config, t)).exists()]  # finished stages skipped
    bar = tqdm(total=len(config.tasks) * len(config.init_states), desc="collect", unit="ep")
    bar.update((len(config.tasks) - len(todo)) * len(config.init_states))

    def finished(task: int, entry: dict[str, Any]) -> None:
        tasks[str(task)] = entry
        tmp = report_path.with_name(f".{report_path.name}.partial")
        tmp.write_text(json.dumps(report, indent=1))
        tmp.replace(report_path)

    if workers == 1 or len(todo) <= 1:  # a pool for one task (or none left) would only cost a process
        for task in todo:
            finished(task, collect_task(client, config, task, out, bar))
    else:
        from concurrent.futures import as_completed

        from energy_rerank.worker_pool import spawn_pool

        assert connect is not None  # checked above
        with spawn_pool(min(workers, len(todo)), initializer=_worker_start, initargs=(connect,)) as pool:
            futures = {pool.submit(_worker_task, config, t, str(out)): t for t in todo}
            for future in as_completed(futures):
                entry = future.result()
                bar.update(entry["episodes"])
                bar.set_postfix(task=futures[future], success=f"{entry['successes']}/{entry['episodes']}")
                finished(futures[future], entry)
    bar.close()
    return report


def _task_file(config: CollectConfig, task: int) -> str:
    return f"{config.suite}_task{task}.hdf5"


_WORKER: dict[str, Any] = {}  # a worker process's own client, opened once


def _worker_start(connect: Callable[[], Any]) -> None:
    _WORKER["client"] = connect()


def _worker_task(config: CollectConfig, task: int, out: str) -> dict[str, Any]:
    return collect_task(_WORKER["client"], config, task, Path(out))


def collect_task(client: Any, config: CollectConfig, task: int, out: Path, bar: Any = None) -> dict[str, Any]:
    """One task's rollouts from every init state -> its HDF5 (written whole) and its report entry."""
    from energy_rerank.libero.controller import ControllerConfig, ServedController
    from energy_rerank.libero.runner import run_episode
    from energy_rerank.libero.sim import LiberoSim, SimConfig
    from energy_rerank.rollouts.hdf5 import write_hdf5

    info = client.info()
    path = out / _task_file(config, task)
    t0 = time.perf_counter()
    sim = LiberoSim(SimConfig(suite=config.suite, task_id=task))
    scratch = LiberoSim(SimConfig(suite=config.suite, task_id=task))
    episodes: list[Episode] = []
    successes: list[bool] = []
    requests = steered = 0
    try:
        for init in config.init_states:
            steers = _ExpertSteers(config.expert_share) if config.expert_share > 0 else None
            ctrl = ServedController(
                client,
                ControllerConfig(
                    num_candidates=config.num_candidates,
                    switch_margin=config.switch_margin,
                    seed=config.seed,
                ),
                episode_key=f"{config.suite}/{task}/{init}",
                chooser=steers,
            )
            labelling = _Labelling(ctrl, sim, scratch, int(info.chunk_len), config.label_every)
            if steers is not None:
                steers.labelling = labelling
            try:
                res = run_episode(sim, labelling, init, max_steps=config.max_steps)
            finally:
                ctrl.close()
            requests += len(ctrl.log.chosen)
            steered += 0 if steers is None else steers.steered
            assert res.episode is not None
            res.episode.obs[LABEL_KEY] = np.stack(labelling.labels).astype(np.float32)  # [T, H, 7]
            res.episode.name = f"demo_{len(episodes)}"
            episodes.append(res.episode)
            successes.append(bool(res.success))
            if bar is not None:
                bar.update()
                bar.set_postfix(task=task, success=f"{sum(successes)}/{len(successes)}")
    finally:
        sim.close()
        scratch.close()
    attrs = {
        "problem_info": {"language_instruction": sim.instruction, "problem_name": sim.config.task_name},
        "env_args": {"suite": config.suite, "task_id": task, "image_size": 0},
        "bddl_file_name": sim.bddl_file,
        "generator": "energy-rerank on-policy collection (served policy, scripted-expert labels)",
        INIT_STATES_ATTR: list(config.init_states),  # demo_i started from init_states[i]
        "successes": successes,  # demo_i solved the task
        "model_version": info.model_version,
        "num_candidates": config.num_candidates,
        "switch_margin": "server" if config.switch_margin is None else config.switch_margin,
        "expert_share": config.expert_share,
    }
    write_hdf5(path, episodes, attrs=attrs)  # written beside, then renamed: never half a file
    return {
        "path": str(path),
        "episodes": len(episodes),
        "successes": sum(successes),
        "steps": int(sum(e.length for e in episodes)),
        "requests": requests,
        "expert_steered": steered,  # requests whose chunk the expert picked (expert_share)
        "seconds": round(time.perf_counter() - t0, 1),
    }
