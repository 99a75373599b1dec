"""A scripted pick-and-place expert that reads privileged object geometry from the simulator.

It covers goals of the form (In|On object target): all of LIBERO-Object, all of
LIBERO-Spatial, and the "put X on/in Y" tasks of LIBERO-Goal. The script is a waypoint state
machine in end-effector space (approach above the object, descend, close, lift, carry above
the target, lower, open), turned into OSC_POSE delta actions by a clipped P-controller; the
orientation is held at its initial value. Small per-episode waypoint jitter and action noise
make the demonstrations varied enough to train a policy on.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from energy_rerank.libero.sim import LiberoSim, region_owner
from energy_rerank.policy.base import Observation

POS_SCALE = 0.05  # OSC_POSE: action 1.0 moves the position target by 5 cm per control step
ROT_SCALE = 0.5  # ... and the orientation target by 0.5 rad


@dataclass(frozen=True)
class ExpertConfig:
    """Knobs of the scripted expert."""

    gain: float = 12.0  # P gain: action = gain * error_in_m / (POS_SCALE * 20); 1.0 saturates at ~8 cm
    hover: float = 0.10  # m above the object's top for the approach
    carry_z: float = 0.28  # absolute height (m) of the lift and transport
    release_above: float = 0.06  # m above the target's top where the gripper opens
    grasp_steps: int = 12  # steps the gripper closes before lifting
    release_steps: int = 10  # steps the gripper opens before retreating
    tol: float = 0.012  # m: a waypoint is reached within this distance
    jitter: float = 0.006  # m: per-episode uniform jitter of the grasp and release points
    action_noise: float = 0.05  # std of Gaussian noise on the 6 motion dims (not the gripper)


def pick_place_pair(sim: LiberoSim) -> tuple[str, str] | None:
    """(object, target body) when the task's goal is a single In/On relation, else None."""
    if len(sim.goal) != 1 or sim.goal[0][0].lower() not in ("in", "on") or len(sim.goal[0]) != 3:
        return None
    _, obj, target = sim.goal[0]
    bodies = sim.env.env.obj_body_id
    return obj, target if target in bodies else region_owner(target, bodies)


def body_aabb(sim: LiberoSim, name: str) -> tuple[np.ndarray, np.ndarray]:
    """World axis-aligned box (low [3], high [3]) around every geom of a body and its children."""
    m, d = sim.env.env.sim.model._model, sim.env.env.sim.data._data
    root = sim.env.env.obj_body_id[name]
    parents = m.body_parentid
    signs = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], dtype=np.float64)
    lows, highs = [], []
    for g in range(m.ngeom):
        b = int(m.geom_bodyid[g])
        while b not in (root, 0):
            b = int(parents[b])
        if b != root:
            continue
        center, half = m.geom_aabb[g, :3], m.geom_aabb[g, 3:]
        corners = (center + signs * half) @ d.geom_xmat[g].reshape(3, 3).T + d.geom_xpos[g]  # [8, 3]
        lows.append(corners.min(0))
        highs.append(corners.max(0))
    if not lows:
        raise ValueError(f"body {name!r} has no geoms")
    return np.min(lows, 0), np.max(highs, 0)


class PickPlaceExpert:
    """One episode's worth of scripted control; build a new one per episode."""

    PHASES = ("approach", "descend", "grasp", "lift", "carry", "lower", "release", "retreat")

    def __init__(self, sim: LiberoSim, config: ExpertConfig = ExpertConfig(), seed: int = 0) -> None:
        pair = pick_place_pair(sim)
        if pair is None:
            raise ValueError(
                f"{sim.config.task_name} ({sim.instruction!r}) is not a single pick-and-place goal"
            )
        self.sim, self.cfg = sim, config
        self.obj, self.target = pair
        self.rng = np.random.default_rng(seed)
        self.grasp_jitter = self.rng.uniform(-config.jitter, config.jitter, size=3)
        self.place_jitter = self.rng.uniform(-config.jitter, config.jitter, size=2)
        self.phase, self.count = 0, 0
        self.gripper = -1.0

    @property
    def phase_name(self) -> str:
        return self.PHASES[min(self.phase, len(self.PHASES) - 1)]

    def __call__(self, obs: Observation) -> np.ndarray:
        """The runner's chunk_fn: a one-step chunk [1, 7]."""
        if obs.state is None:
            raise ValueError("the scripted expert reads the end-effector position from Observation.state[:3]")
        return self.act(obs.state[:3])[None]

    def act(self, ee_pos: np.ndarray) -> np.ndarray:
        """Next 7-D action given the end-effector position (object geometry read from the simulator)."""
        ee = np.asarray(ee_pos, dtype=np.float64)
        lo, hi = body_aabb(self.sim, self.obj)
        grasp = np.array([(lo[0] + hi[0]) / 2, (lo[1] + hi[1]) / 2, max((lo[2] + hi[2]) / 2, hi[2] - 0.03)])
        grasp += self.grasp_jitter
        tlo, thi = body_aabb(self.sim, self.target)
        place = np.array([(tlo[0] + thi[0]) / 2, (tlo[1] + thi[1]) / 2, thi[2] + self.cfg.release_above])
        place[:2] += self.place_jitter
        name, cfg = self.phase_name, self.cfg
        done: bool
        if name == "approach":
            goal, grip = np.r_[grasp[:2], hi[2] + cfg.hover], -1.0
            done = bool(np.linalg.norm(goal - ee) < 2 * cfg.tol)
        elif name == "descend":  # the fingertips may meet the table (or a neighbour) first: time out
            goal, grip = grasp, -1.0
            done = bool(np.linalg.norm(goal - ee) < cfg.tol or self.count > 40)
        elif name == "grasp":
            goal, grip = grasp, 1.0
            done = self.count >= cfg.grasp_steps
        elif name == "lift":
            goal, grip = np.r_[ee[:2], cfg.carry_z], 1.0
            done = bool(ee[2] > cfg.carry_z - 0.03)
        elif name == "carry":
            goal, grip = np.r_[place[:2], cfg.carry_z], 1.0
            done = bool(np.linalg.norm(goal[:2] - ee[:2]) < cfg.tol)
        elif name == "lower":
            goal, grip = place, 1.0
            done = bool(np.linalg.norm(goal - ee) < 1.5 * cfg.tol or self.count > 40)
        elif name == "release":
            goal, grip = place, -1.0
            done = self.count >= cfg.release_steps
        else:
            goal, grip = np.r_[ee[:2], cfg.carry_z], -1.0
            done = False
        self.count += 1
        if done:
            self.phase, self.count = self.phase + 1, 0
        move = np.clip(cfg.gain * (goal - ee), -1.0, 1.0)
        action = np.r_[move, 0.0, 0.0, 0.0, grip]
        action[:6] += self.rng.normal(0.0, cfg.action_noise, size=6)
        return np.clip(action, -1.0, 1.0).astype(np.float32)
