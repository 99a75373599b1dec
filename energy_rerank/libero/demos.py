"""Demonstrations from the real simulator: the scripted expert, successes only, standard HDF5.

One file per task (`{suite}_task{id}.hdf5`), attempts walking through the chosen fixed init
states in order (by default the protocol's training states 0-29, `libero.protocol`; past the last
one they start over with new expert seeds), each file recording the init state of every demo, and
a JSON summary with the expert's success rate per task:

    energy-rerank libero demos --suite libero_object --tasks 0-9 --episodes 20 --init-states 0-29 --out data/libero
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from tqdm import tqdm

from energy_rerank.libero.expert import ExpertConfig, PickPlaceExpert, pick_place_pair
from energy_rerank.libero.protocol import INIT_STATES_ATTR, TRAIN_INIT_STATES
from energy_rerank.libero.runner import run_episode
from energy_rerank.libero.sim import LiberoSim, SimConfig
from energy_rerank.rollouts.episode import Episode
from energy_rerank.rollouts.hdf5 import write_hdf5

REPORT_FILE = "demo_report.json"


@dataclass(frozen=True)
class DemoConfig:
    """What to generate."""

    suite: str = "libero_object"  # LIBERO suite
    task_ids: tuple[int, ...] = (0,)  # tasks of the suite; ones the expert cannot script are skipped
    episodes: int = 10  # successful episodes to keep per task
    max_attempts: int = 50  # attempts per task before giving up
    init_states: tuple[int, ...] = TRAIN_INIT_STATES  # attempt i starts from init_states[i % K]
    image_size: int = 0  # 0 = low-dim only; 64-224 adds agentview_rgb and eye_in_hand_rgb
    seed: int = 0  # seeds the expert's jitter and noise (attempt i uses seed + i)
    expert: ExpertConfig = ExpertConfig()  # scripted expert knobs

    def __post_init__(self) -> None:
        if not self.init_states:
            raise ValueError("init_states: need at least one init state")


@dataclass(frozen=True)
class TaskReport:
    """Outcome of generating one task's demonstrations."""

    task: str  # "suite/id"
    instruction: str  # language instruction
    attempts: int  # episodes run
    successes: int  # episodes kept
    success_rate: float  # successes / attempts: the scripted expert's success rate
    mean_steps: float  # mean length of the kept episodes
    seconds: float  # wall time for the task
    path: str  # HDF5 written ("" if no success or not scriptable)
    skipped: str = ""  # why the task was skipped, if it was


def generate_demos(cfg: DemoConfig, out_dir: str | Path, overwrite: bool = False) -> list[TaskReport]:
    """Generate every task's file under out_dir and write the JSON summary beside them."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    reports = [_task(cfg, tid, out, overwrite) for tid in cfg.task_ids]
    summary = {"config": asdict(cfg), "tasks": [asdict(r) for r in reports]}
    (out / REPORT_FILE).write_text(json.dumps(summary, indent=2))
    return reports


def _task(cfg: DemoConfig, task_id: int, out: Path, overwrite: bool) -> TaskReport:
    t0 = time.perf_counter()
    sim = LiberoSim(SimConfig(suite=cfg.suite, task_id=task_id, image_size=cfg.image_size, seed=cfg.seed))
    name = sim.config.task_name
    try:
        if pick_place_pair(sim) is None:
            return TaskReport(
                name, sim.instruction, 0, 0, 0.0, 0.0, 0.0, "", skipped="not a pick-and-place goal"
            )
        kept: list[Episode] = []
        kept_inits: list[int] = []
        attempts = 0
        bar = tqdm(total=cfg.episodes, desc=name, unit="demo", leave=False)
        while len(kept) < cfg.episodes and attempts < cfg.max_attempts:
            init = cfg.init_states[attempts % len(cfg.init_states)]
            expert = PickPlaceExpert(sim, cfg.expert, seed=cfg.seed + attempts)
            result = run_episode(sim, expert, init)
            attempts += 1
            if result.success and result.episode is not None:
                result.episode.name = f"demo_{len(kept)}"
                kept.append(result.episode)
                kept_inits.append(init)
                bar.update(1)
            bar.set_postfix(success=f"{len(kept)}/{attempts}")
        bar.close()
        path = ""
        if kept:
            attrs = {
                "problem_info": {"language_instruction": sim.instruction, "problem_name": name},
                "env_args": {"suite": cfg.suite, "task_id": task_id, "image_size": cfg.image_size},
                "bddl_file_name": sim.bddl_file,
                "generator": "energy-rerank scripted pick-and-place expert",
                INIT_STATES_ATTR: kept_inits,  # demo_i started from init state kept_inits[i]
            }
            target = out / f"{cfg.suite}_task{task_id}.hdf5"
            path = str(write_hdf5(target, kept, attrs=attrs, overwrite=overwrite))
        mean_steps = sum(e.length for e in kept) / max(len(kept), 1)
        seconds = time.perf_counter() - t0
        return TaskReport(
            name,
            sim.instruction,
            attempts,
            len(kept),
            len(kept) / max(attempts, 1),
            mean_steps,
            seconds,
            path,
        )
    finally:
        sim.close()
