"""A scripted pick-and-place expert that reads privileged object geometry from the simulator.

It covers goals of the form (In|On object target): all of LIBERO-Object, all of
LIBERO-Spatial, and the "put X on/in Y" tasks of LIBERO-Goal. The script is a waypoint state
machine in end-effector space (approach above the object, descend, close, lift, carry above
the target, lower, open), turned into OSC_POSE delta actions by a clipped P-controller; the
orientation is held pointing down, fingers closing along world y. Small per-episode waypoint
jitter and action noise make the demonstrations varied enough to train a policy on.

Solid objects are grasped at the centre of their box. A hollow one (a bowl: no collision geometry
rises through the middle of it, `rim`) has only air there, so it is grasped by its wall just below
the rim: on the y side whose outside leaves the open outer finger room (rays against the other
objects and fixtures, `rim_wall`), else on an x side with the hand turned a quarter about z (a
bowl in a drawer, whose front is too close and whose back is under the cabinet's top). The bowl
then hangs beside the fingers, so `holds` looks for the fingertips at its wall, and the release
point is shifted by the hand-to-bowl offset so that the bowl's origin, which the task checks,
lands over the target. It is carried higher, above the workspace surface (LIBERO-Spatial's table
is at 0.9 m), than solid objects, whose carry height stays absolute.

The expert can also take over from a state it did not produce (a policy's rollout, a restored
recorded state): `infer_phase` reads the phase from the simulator (is the object between
closed fingers, are the fingers closing or opening, is the gripper above the object or the
target) and `PickPlaceExpert.resume` starts the state machine there. Phases that the script
times by counting steps (grasp, release, the descend and lower time-outs) restart their count:
the state does not say how long the fingers have been closing, only whether they still move.
"""

from __future__ import annotations

import weakref
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
    # Hollow objects (bowls) are grasped by their wall, not at their centre (there is only air there).
    rim_depth: float = 0.015  # m below the rim's top where the fingertips close on the wall
    rim_inset: float = 0.005  # m inward from the rim's outer edge (along y) to the grasp point
    rim_room: float = 0.05  # m of free space the open outer finger needs beside the wall it grasps
    rim_drop: float = 0.015  # m between the held bowl's bottom and the target's top at release
    rim_carry: float = 0.32  # m above the workspace surface for the lift and transport of a bowl


# Labels for visited states: the script without its per-episode randomness (its noise is no part of
# what a learner should imitate, and a visited state carries no episode's jitter).
LABEL_EXPERT = ExpertConfig(jitter=0.0, action_noise=0.0)

# Finger thresholds read by `infer_phase` (gap as `LiberoSim.finger_gap`, m; open: sim.OPEN_GAP).
EMPTY_GAP = 0.004  # narrower than this: closed on nothing
RIM_GAP = 0.001  # ... but a bowl's wall is thinner
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


@dataclass(frozen=True)
class Rim:
    """A hollow object's wall, read from its collision geometry (the visual mesh's box is looser)."""

    centre: np.ndarray  # [3] centre of the collision geometry's world box
    half: np.ndarray  # [2] m: the box's half-widths along x and y (the rim's outer radius, upright)
    top: float  # m: world z of the rim
    bottom: float  # m: world z of the base


def collision_geoms(sim: LiberoSim, roots: set[int]) -> np.ndarray:
    """Ids [G] of the colliding geoms (planes aside) of the bodies at or below any of `roots`."""
    m = sim.env.env.sim.model._model
    parents = np.asarray(m.body_parentid)
    top = np.arange(m.nbody)  # each body's nearest ancestor among the roots (or the world, 0)
    for _ in range(m.nbody):
        up = np.where(np.isin(top, list(roots)) | (top == 0), top, parents[top])
        if np.array_equal(up, top):
            break
        top = up
    colliding = (np.asarray(m.geom_contype) | np.asarray(m.geom_conaffinity)) != 0
    keep = np.isin(top[np.asarray(m.geom_bodyid)], list(roots)) & colliding & (np.asarray(m.geom_type) != 0)
    return np.flatnonzero(keep)


# Object names known to be solid, per simulator: hollowness is a property of the object's own
# geometry, so it is read once; the expert asks on every step, and most objects are solid.
_SOLID: weakref.WeakKeyDictionary[LiberoSim, set[str]] = weakref.WeakKeyDictionary()


def rim(sim: LiberoSim, name: str) -> Rim | None:
    """The object's rim when it is hollow, else None (solid objects are grasped at their centre).

    Hollow: in the object's own frame (so the answer does not change as it tilts in the hand), no
    collision geometry on the vertical through its centre rises above its lower half (a bowl's
    base is there, its wall is around it).
    """
    solid = _SOLID.setdefault(sim, set())
    if name in solid:
        return None
    found = _rim(sim, name)
    if found is None:
        solid.add(name)
    return found


def _rim(sim: LiberoSim, name: str) -> Rim | None:
    m, d = sim.env.env.sim.model._model, sim.env.env.sim.data._data
    root = sim.env.env.obj_body_id[name]
    geoms = collision_geoms(sim, {root})
    if not len(geoms):
        return None
    signs = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], dtype=np.float64)
    box = m.geom_aabb[geoms]  # [G, 6] centre and half-size in each geom's frame
    corners = box[:, None, :3] + signs[None] * box[:, None, 3:]  # [G, 8, 3]
    world = (
        np.einsum("gij,gkj->gki", d.geom_xmat[geoms].reshape(-1, 3, 3), corners) + d.geom_xpos[geoms][:, None]
    )
    own = (world - d.xpos[root]) @ d.xmat[root].reshape(3, 3)  # [G, 8, 3] in the object's frame
    llo, lhi = own.min(1), own.max(1)  # [G, 3]
    c = (llo.min(0) + lhi.max(0)) / 2
    through = ((llo[:, :2] <= c[:2]) & (c[:2] <= lhi[:, :2])).all(1)
    base, height = llo[:, 2].min(), lhi[:, 2].max() - llo[:, 2].min()
    if through.any() and lhi[through, 2].max() > base + height / 2:
        return None
    lo, hi = world.min((0, 1)), world.max((0, 1))
    centre = (lo + hi) / 2
    return Rim(centre=centre, half=(hi - centre)[:2], top=float(hi[2]), bottom=float(lo[2]))


def rim_wall(sim: LiberoSim, obj: str, r: Rim, cfg: ExpertConfig) -> np.ndarray:
    """Unit direction [2] from the bowl's centre to the wall to grasp: (0, +-1) with the hand as it
    is (fingers closing along y), else (+-1, 0) with the hand turned a quarter about z.

    The outer finger goes down beside the wall, so a side with less than `rim_room` free outward
    (rays at the rim's height), or something above it (a cabinet's top over a drawer), is avoided.
    Preference: the y sides, the one nearer the robot's centre line y = 0 first, then the x side
    nearer the robot (x < 0); with no side free, the roomiest.
    """
    import mujoco

    m, d = sim.env.env.sim.model._model, sim.env.env.sim.data._data
    scene = set(sim.env.env.obj_body_id.values()) - {sim.env.env.obj_body_id[obj]}  # not the robot
    geoms = collision_geoms(sim, scene)

    def hit(start: np.ndarray, ray: np.ndarray, reach: float) -> float:
        """Distance along the ray to the nearest scene geom, at most `reach`."""
        near = reach
        for g in geoms:
            if m.geom_type[g] == 7:
                dist = mujoco.mj_rayMesh(m, d, g, start, ray)
            else:
                dist = mujoco.mju_rayGeom(
                    d.geom_xpos[g], d.geom_xmat[g], m.geom_size[g], start, ray, int(m.geom_type[g])
                )
            if 0 <= dist < near:
                near = dist
        return near

    sy = -1.0 if r.centre[1] > 0 else 1.0
    candidates = [np.array(u) for u in ((0.0, sy), (0.0, -sy), (-1.0, 0.0), (1.0, 0.0))]
    low = r.top - cfg.rim_depth - 0.015  # where the fingertips end up
    rooms = []
    for u in candidates:
        radius = float(np.abs(u) @ r.half)
        across = np.array([-u[1], u[0]])  # along the wall
        room = 0.1
        for w in (-0.01, 0.0, 0.01):  # the finger's width
            edge = r.centre[:2] + u * (radius + 0.002) + across * w
            for z in (r.top - 0.005, low):
                room = min(room, hit(np.r_[edge, z], np.r_[u, 0.0], room))
            above = np.r_[r.centre[:2] + u * (radius + 0.01) + across * w, r.top + 0.1]
            if hit(above, np.array([0.0, 0.0, -1.0]), above[2] - low) < above[2] - low:
                room = 0.0
        if room >= cfg.rim_room:
            return u
        rooms.append(room)
    return candidates[int(np.argmax(rooms))]


def hand_rotation(sim: LiberoSim, obj: str, wall: np.ndarray | None, ee: np.ndarray) -> np.ndarray:
    """The orientation [3, 3] the hand is steered to: pointing down, fingers closing along y, for
    solid objects; for a bowl, fingers closing across the wall to grasp (`rim_wall`), or while the
    bowl is held, across the wall it holds (the nearer of the two, so it is never turned in hand)."""
    if wall is None:
        return DOWN
    current = sim.ee_rotation()
    along_x = abs(current[0, 0]) > abs(current[1, 0]) if holds(sim, obj, ee) else abs(wall[0]) > 0.5
    if not along_x:
        return DOWN
    turned = [np.array([[0.0, -s, 0.0], [s, 0.0, 0.0], [0.0, 0.0, 1.0]]) @ DOWN for s in (1.0, -1.0)]
    return min(turned, key=lambda t: float(np.linalg.norm(rotation_error(current, t))))


def carry_height(sim: LiberoSim, obj: str, cfg: ExpertConfig) -> float:
    """Absolute z of the lift and transport: the config's for solid objects, above the workspace
    surface (the floor or a 0.9 m table) for a bowl, which hangs below the fingers by its rim."""
    if rim(sim, obj) is None:
        return cfg.carry_z
    return float(sim.env.env.workspace_offset[2]) + cfg.rim_carry


def holds(sim: LiberoSim, obj: str, ee: np.ndarray) -> bool:
    """The object sits between the fingers: they are closed on something and the object's centre is
    at the fingertips (the recorded grasps keep it within ~1.5 cm of the end-effector site; 5 cm
    sideways allows for long objects held off-centre). A bowl is held by its wall: the fingertips
    are at its rim's radius from its centre, between its base and its rim."""
    gap, _ = sim.finger_gap()
    r = rim(sim, obj)
    if r is not None:
        radial = np.linalg.norm(ee[:2] - r.centre[:2]) - float(r.half.mean())
        return bool(RIM_GAP < gap < OPEN_GAP and -0.03 < radial < 0.015 and r.bottom < ee[2] < r.top + 0.02)
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
    ee: np.ndarray | None = None,
    wall: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, float]:
    """(grasp point [3], release point [3], top of the object) from the current object geometry.
    ee [3]: the end-effector, for the hand-to-bowl offset of a held bowl; wall [2]: the bowl's wall
    to grasp (`rim_wall`, chosen here when not given)."""
    r = rim(sim, obj)
    if r is not None:
        wall = rim_wall(sim, obj, r, cfg) if wall is None else wall
        return rim_waypoints(sim, obj, target, r, cfg, grasp_jitter, place_jitter, ee, wall)
    lo, hi = body_aabb(sim, obj)
    grasp = np.array([(lo[0] + hi[0]) / 2, (lo[1] + hi[1]) / 2, max((lo[2] + hi[2]) / 2, hi[2] - 0.03)])
    grasp += grasp_jitter
    tlo, thi = body_aabb(sim, target)
    place = np.array([(tlo[0] + thi[0]) / 2, (tlo[1] + thi[1]) / 2, thi[2] + cfg.release_above])
    place[:2] += place_jitter
    return grasp, place, float(hi[2])


def rim_waypoints(
    sim: LiberoSim,
    obj: str,
    target: str,
    r: Rim,
    cfg: ExpertConfig,
    grasp_jitter: np.ndarray,
    place_jitter: np.ndarray,
    ee: np.ndarray | None,
    wall: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, float]:
    """`waypoints` of a bowl: the grasp closes on the chosen wall (`rim_wall`) just below the rim;
    the release point puts the bowl's origin, not the hand, over the target's centre and its base
    just above the target's top, by the hand-to-bowl offset (measured while the bowl is held, else
    the one the grasp will have)."""
    radius = float(np.abs(wall) @ r.half)
    grasp = np.r_[r.centre[:2] + wall * (radius - cfg.rim_inset), r.top - cfg.rim_depth]
    grasp += grasp_jitter
    held = ee is not None and holds(sim, obj, ee)
    # The task checks the bowl's body origin (within 3 cm of the target's): a tilted bowl's box centre
    # is centimetres away from it.
    origin = sim.env.env.sim.data.body_xpos[sim.env.env.obj_body_id[obj]][:2]
    offset = (np.asarray(ee) if held else grasp) - np.r_[origin, r.bottom]  # [3] hand minus bowl
    tlo, thi = body_aabb(sim, target)
    place = np.array([(tlo[0] + thi[0]) / 2, (tlo[1] + thi[1]) / 2, thi[2] + cfg.rim_drop]) + offset
    place[:2] += place_jitter
    return grasp, place, r.top


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
    grasp, place, top = waypoints(sim, obj, target, config, zero3, zero2, ee)
    carry_z = carry_height(sim, obj, config)
    gap, rate = sim.finger_gap()
    phase = PickPlaceExpert.PHASES.index
    if sim.success():
        return phase("retreat")
    if holds(sim, obj, ee) and rate <= FINGER_SPEED:
        if np.linalg.norm(place[:2] - ee[:2]) < 1.5 * config.tol:
            return phase("lower")
        if rate < -FINGER_SPEED:  # still closing on it
            return phase("grasp")
        return phase("lift") if ee[2] < carry_z - 0.03 else phase("carry")
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
        self.hollow = rim(sim, self.obj) is not None  # a bowl: grasped by its wall
        self.wall: np.ndarray | None = None  # [2] the bowl's wall to grasp; re-chosen while approaching

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
        cfg = self.cfg
        self._recheck(ee)
        name = self.phase_name
        r = rim(self.sim, self.obj) if self.hollow else None
        if r is not None and (self.wall is None or name == "approach"):
            self.wall = rim_wall(self.sim, self.obj, r, cfg)
        grasp, place, top = waypoints(
            self.sim, self.obj, self.target, cfg, self.grasp_jitter, self.place_jitter, ee, self.wall
        )
        carry_z = carry_height(self.sim, self.obj, cfg)
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
            goal, grip = np.r_[ee[:2], carry_z], 1.0
            done = bool(ee[2] > carry_z - 0.03)
        elif name == "carry":
            goal, grip = np.r_[place[:2], carry_z], 1.0
            done = bool(np.linalg.norm(goal[:2] - ee[:2]) < cfg.tol)
        elif name == "lower":
            goal, grip = place, 1.0
            done = bool(np.linalg.norm(goal - ee) < 1.5 * cfg.tol or self.count > 40)
        elif name == "release":
            goal, grip = place, -1.0
            done = self.count >= cfg.release_steps
        else:
            goal, grip = np.r_[ee[:2], carry_z], -1.0
            done = False
        self.count += 1
        if done:
            self.phase, self.count = self.phase + 1, 0
        move = np.clip(cfg.gain * (goal - ee), -1.0, 1.0)
        hand = hand_rotation(self.sim, self.obj, self.wall, ee)
        turn = np.clip(cfg.rot_gain * rotation_error(self.sim.ee_rotation(), hand), -1.0, 1.0)
        action = np.r_[move, turn, grip]
        if cfg.action_noise > 0:  # no draw without noise: labels do not consume the episode's stream
            action[:6] += self.rng.normal(0.0, cfg.action_noise, size=6)
        return np.clip(action, -1.0, 1.0).astype(np.float32)
