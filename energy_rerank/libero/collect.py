"""On-policy rollouts with expert labels: what a head learns from where the policy actually goes.

The served policy runs through the real server (N candidates, the request's switch margin) from
chosen init states; at every control step the scripted expert labels the state the robot is in
(`relabel.expert_label` in a scratch simulator, with the rollout's gripper command), so each
step carries both the executed action and the chunk the expert would have executed from there.
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

    def __post_init__(self) -> None:
        if not self.tasks or not self.init_states or self.num_candidates < 1 or self.label_every < 1:
            raise ValueError(f"need some tasks, init states, N >= 1 and label_every >= 1; got {self}")
        if self.switch_margin is not None and not self.switch_margin >= 0:
            raise ValueError(f"switch_margin must be >= 0 (inf: never switch), got {self.switch_margin}")


class _Labelling:
    """chunk_fn wrapper: labels the rollout's current state, then asks the served controller."""

    def __init__(self, inner: Any, rollout: Any, scratch: Any, chunk_len: int, every: int = 1) -> None:
        self.inner, self.rollout, self.scratch, self.chunk_len = inner, rollout, scratch, chunk_len
        self.every = every  # label every k-th step, NaN between
        self.labels: list[np.ndarray] = []  # [H, 7] per control step

    def __call__(self, obs: Any) -> np.ndarray:
        from energy_rerank.libero.relabel import expert_label

        if len(self.labels) % self.every:
            self.labels.append(np.full((self.chunk_len, 7), np.nan, np.float32))
        else:
            state, command = self.rollout.get_state(), self.rollout.gripper_command
            self.labels.append(expert_label(self.scratch, state, self.chunk_len, gripper_command=command))
        return np.asarray(self.inner(obs))[:1]  # one action per call: a label for every step


def collect(client: Any, config: CollectConfig, out_dir: str | Path) -> dict[str, Any]:
    """Collect every task not yet on disk under out_dir; returns (and writes) the report."""
    from tqdm import tqdm

    from energy_rerank.libero.controller import ControllerConfig, ServedController
    from energy_rerank.libero.runner import run_episode
    from energy_rerank.libero.sim import LiberoSim, SimConfig
    from energy_rerank.rollouts.hdf5 import write_hdf5

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    info = client.info()
    report_path = out / REPORT_FILE
    report: dict[str, Any] = json.loads(report_path.read_text()) if report_path.is_file() else {}
    report.update(config=asdict(config), model_version=info.model_version)
    tasks: dict[str, Any] = report.setdefault("tasks", {})
    bar = tqdm(total=len(config.tasks) * len(config.init_states), desc="collect", unit="ep")
    for task in config.tasks:
        path = out / f"{config.suite}_task{task}.hdf5"
        if path.exists():  # a finished stage: resume after it
            bar.update(len(config.init_states))
            continue
        t0 = time.perf_counter()
        sim = LiberoSim(SimConfig(suite=config.suite, task_id=task))
        scratch = LiberoSim(SimConfig(suite=config.suite, task_id=task))
        episodes: list[Episode] = []
        successes: list[bool] = []
        try:
            for init in config.init_states:
                ctrl = ServedController(
                    client,
                    ControllerConfig(
                        num_candidates=config.num_candidates,
                        switch_margin=config.switch_margin,
                        seed=config.seed,
                    ),
                    episode_key=f"{config.suite}/{task}/{init}",
                )
                labelling = _Labelling(ctrl, sim, scratch, int(info.chunk_len), config.label_every)
                try:
                    res = run_episode(sim, labelling, init, max_steps=config.max_steps)
                finally:
                    ctrl.close()
                assert res.episode is not None
                res.episode.obs[LABEL_KEY] = np.stack(labelling.labels).astype(np.float32)  # [T, H, 7]
                res.episode.name = f"demo_{len(episodes)}"
                episodes.append(res.episode)
                successes.append(bool(res.success))
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
        }
        write_hdf5(path, episodes, attrs=attrs)  # written beside, then renamed: never half a file
        tasks[str(task)] = {
            "path": str(path),
            "episodes": len(episodes),
            "successes": sum(successes),
            "steps": int(sum(e.length for e in episodes)),
            "seconds": round(time.perf_counter() - t0, 1),
        }
        tmp = report_path.with_name(f".{report_path.name}.partial")
        tmp.write_text(json.dumps(report, indent=1))
        tmp.replace(report_path)
    bar.close()
    return report
