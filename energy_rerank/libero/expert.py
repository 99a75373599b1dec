"""A scripted pick-and-place expert that reads privileged object geometry from the simulator.

It covers goals of the form (In|On object target): all of LIBERO-Object, all of
LIBERO-Spatial, and the "put X on/in Y" tasks of LIBERO-Goal. The script is a waypoint state
machine in end-effector space (approach above the object, descend, close, lift, carry above
the target, lower, open), turned into OSC_POSE delta actions by a clipped P-controller; the
orientation is held at its initial value. Small per-episode waypoint jitter and action noise
make the demonstrations varied enough to train a policy on.

The expert can also take over from a state it did not produce (a policy's rollout, a restored
recorded state): `infer_phase` reads the phase from the simulator (is the object between
closed fingers, are the fingers closing or opening, is the gripper above the object or the
target) and `PickPlaceExpert.resume` starts the state machine there. Phases that the script
times by counting steps (grasp, release, the descend and lower time-outs) restart their count:
the state does not say how long the fingers have been closing, only whether they still move.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from energy_rerank.libero.sim import OPEN_GAP, LiberoSim, region_owner
from energy_rerank.policy.base import Observation

POS_SCALE = 0.05  # OSC_POSE: action 1.0 moves the position target by 5 cm per control step
ROT_SCALE = 0.5  # ... and the orientation target by 0.5 rad
# The end-effector's rest orientation in every LIBERO init state (within ~0.1 rad): fingers pointing
# down, the gripper's opening along the world y axis.
DOWN = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, -1.0]])


@dataclass(frozen=True)
class ExpertConfig:
    """Knobs of the scripted expert."""

    gain: float = 12.0  # P gain: action = gain * error_in_m / (POS_SCALE * 20); 1.0 saturates at ~8 cm
    rot_gain: float = 1.0  # orientation P gain: action = rot_gain * error_in_rad; 1.0 halves the error a step
    hover: float = 0.10  # m above the object's top for the approach
    carry_z: float = 0.28  # absolute height (m) of the lift and transport
    release_above: float = 0.06  # m above the target's top where the gripper opens
    grasp_steps: int = 12  # steps the gripper closes before lifting
    release_steps: int = 10  # steps the gripper opens before retreating
    tol: float = 0.012  # m: a waypoint is reached within this distance
    jitter: float = 0.006  # m: per-episode uniform jitter of the grasp and release points
    action_noise: float = 0.05  # std of Gaussian noise on the 6 motion dims (not the gripper)


# Labels for visited states: the script without its per-episode randomness (its noise is no part of
# what a learner should imitate, and a visited state carries no episode's jitter).
LABEL_EXPERT = ExpertConfig(jitter=0.0, action_noise=0.0)

# Finger thresholds read by `infer_phase` (gap as `LiberoSim.finger_gap`, m; open: sim.OPEN_GAP).
EMPTY_GAP = 0.004  # narrower than this: closed on nothing
FINGER_SPEED = 0.01  # m/s of gap change: faster, the fingers are still closing or opening


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


def rotation_error(current: np.ndarray, target: np.ndarray) -> np.ndarray:
    """World-frame axis-angle [3] (rad) turning rotation `current` [3, 3] into `target` [3, 3]."""
    from robosuite.utils.transform_utils import mat2quat, quat2axisangle

    return np.asarray(quat2axisangle(mat2quat(target @ current.T)), np.float64)


def holds(sim: LiberoSim, obj: str, ee: np.ndarray) -> bool:
    """The object sits between the fingers: they are closed on something and the object's centre is
    at the fingertips (the recorded grasps keep it within ~1.5 cm of the end-effector site; 5 cm
    sideways allows for long objects held off-centre)."""
    gap, _ = sim.finger_gap()
    lo, hi = body_aabb(sim, obj)
    offset = (lo + hi) / 2 - ee  # [3]
    return bool(EMPTY_GAP < gap < OPEN_GAP and np.linalg.norm(offset[:2]) < 0.05 and -0.06 < offset[2] < 0.03)


def waypoints(
    sim: LiberoSim,
    obj: str,
    target: str,
    cfg: ExpertConfig,
    grasp_jitter: np.ndarray,
    place_jitter: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, float]:
    """(grasp point [3], release point [3], top of the object) from the current object geometry."""
    lo, hi = body_aabb(sim, obj)
    grasp = np.array([(lo[0] + hi[0]) / 2, (lo[1] + hi[1]) / 2, max((lo[2] + hi[2]) / 2, hi[2] - 0.03)])
    grasp += grasp_jitter
    tlo, thi = body_aabb(sim, target)
    place = np.array([(tlo[0] + thi[0]) / 2, (tlo[1] + thi[1]) / 2, thi[2] + cfg.release_above])
    place[:2] += place_jitter
    return grasp, place, float(hi[2])


def infer_phase(sim: LiberoSim, ee_pos: np.ndarray, config: ExpertConfig = LABEL_EXPERT) -> int:
    """Index into PickPlaceExpert.PHASES of the phase the script would be in at this state.

    Decided from the object's place relative to the fingers and the target, the finger gap and its
    rate, in this order: task already solved -> retreat; object held -> lift / carry / lower by
    height and distance to the target; fingers closing at the object -> grasp; fingers opening over
    the target -> release; open hand -> grasp / descend / approach by distance to the grasp point;
    closed on nothing (a missed grasp) -> approach, which opens the hand and starts over.
    """
    pair = pick_place_pair(sim)
    if pair is None:
        raise ValueError(f"{sim.config.task_name} is not a single pick-and-place goal")
    obj, target = pair
    ee = np.asarray(ee_pos, dtype=np.float64)
    zero3, zero2 = np.zeros(3), np.zeros(2)
    grasp, place, top = waypoints(sim, obj, target, config, zero3, zero2)
    gap, rate = sim.finger_gap()
    phase = PickPlaceExpert.PHASES.index
    if sim.success():
        return phase("retreat")
    if holds(sim, obj, ee) and rate <= FINGER_SPEED:
        if np.linalg.norm(place[:2] - ee[:2]) < 1.5 * config.tol:
            return phase("lower")
        if rate < -FINGER_SPEED:  # still closing on it
            return phase("grasp")
        return phase("lift") if ee[2] < config.carry_z - 0.03 else phase("carry")
    if rate > FINGER_SPEED and np.linalg.norm(place[:2] - ee[:2]) < 3 * config.tol:
        return phase("release")
    at_grasp = np.linalg.norm(grasp - ee) < 1.5 * config.tol
    if rate < -FINGER_SPEED and at_grasp:
        return phase("grasp")
    if gap < OPEN_GAP and rate <= FINGER_SPEED and not at_grasp:
        return phase("approach")  # closed (on nothing, or on the wrong thing): open and start over
    if at_grasp:
        return phase("grasp")
    above = np.linalg.norm(grasp[:2] - ee[:2]) < 2 * config.tol and ee[2] < top + config.hover + config.tol
    return phase("descend") if above else phase("approach")


class PickPlaceExpert:
    """One episode's worth of scripted control; build a new one per episode (or `resume` one)."""

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

    @classmethod
    def resume(
        cls, sim: LiberoSim, ee_pos: np.ndarray, config: ExpertConfig = LABEL_EXPERT, seed: int = 0
    ) -> PickPlaceExpert:
        """An expert that takes over at the simulator's current state, in the phase read from it."""
        expert = cls(sim, config, seed)
        expert.phase = infer_phase(sim, ee_pos, config)
        return expert

    def _recheck(self, ee: np.ndarray) -> None:
        """Start over from the phase the world is in when the script's plan no longer holds: the
        object slipped out of the hand while it was carried, or it was let go somewhere that does
        not solve the task (then the arm goes back for it)."""
        carrying = self.phase_name in ("lift", "carry", "lower")
        if carrying and not holds(self.sim, self.obj, ee):
            self.phase, self.count = infer_phase(self.sim, ee, self.cfg), 0
        elif self.phase_name == "retreat" and self.count > self.cfg.release_steps and not self.sim.success():
            self.phase, self.count = self.PHASES.index("approach"), 0

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
        grasp, place, top = waypoints(
            self.sim, self.obj, self.target, self.cfg, self.grasp_jitter, self.place_jitter
        )
        cfg = self.cfg
        self._recheck(ee)
        name = self.phase_name
        done: bool
        if name == "approach":
            goal, grip = np.r_[grasp[:2], top + cfg.hover], -1.0
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
        turn = np.clip(cfg.rot_gain * rotation_error(self.sim.ee_rotation(), DOWN), -1.0, 1.0)
        action = np.r_[move, turn, grip]
        if cfg.action_noise > 0:  # no draw without noise: labels do not consume the episode's stream
            action[:6] += self.rng.normal(0.0, cfg.action_noise, size=6)
        return np.clip(action, -1.0, 1.0).astype(np.float32)
