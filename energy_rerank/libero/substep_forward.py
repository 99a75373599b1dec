"""Fewer MuJoCo forward passes inside a robosuite control step, with bit-identical physics.

robosuite runs 25 physics substeps per control step, and each substep calls `sim.forward()`
twice before `mj_step` (which runs its own full forward pass): once in the environment's loop
and once in the controller's `update`, on the same state. Of those three passes per substep the
first two only feed the operational-space controller, which reads positions, Jacobians, the mass
matrix and the bias forces: the position and velocity stages of the pipeline. So, inside a
control step only:

- a forward on the very state (and controls) of the previous one is skipped: nothing it would
  compute can differ;
- the first forward of a control step is the full one (robosuite reads the force sensors then,
  an acceleration-stage quantity, into its history buffers); later ones run the position and
  velocity stages (`mj_fwdPosition` + `mj_fwdVelocity`) and leave the acceleration stage and the
  constraint solver to `mj_step`, which recomputes them from the same inputs before integrating.

Outside a control step (resets, restored states, reading an observation) `forward` is MuJoCo's
own full pass. The trajectory is bit-identical (tests/test_libero_sim.py); by the profile in
docs/results.md#libero-throughput a substep's ~356 us lose about 85 (two 55 us passes become one
26 us partial one).
"""

from __future__ import annotations

from typing import Any

import numpy as np


def install(env: Any) -> None:
    """Replace `env.sim.forward` and `env.step` of one robosuite environment (instance attributes)."""
    import mujoco

    sim = env.sim
    model, data = sim.model._model, sim.data._data
    spec = mujoco.mjtState.mjSTATE_INTEGRATION  # every input of a forward pass (time, qpos, qvel, act, ctrl, ...)
    last = np.empty(mujoco.mj_stateSize(model, spec))  # the inputs of the last forward in this control step
    now = np.empty_like(last)
    stepping = False  # inside env.step
    passes = 0  # forwards run so far in this control step

    def forward() -> None:
        nonlocal passes
        if not stepping:
            mujoco.mj_forward(model, data)
            return
        mujoco.mj_getState(model, data, now, spec)
        if passes and np.array_equal(now, last):
            return
        if passes:
            mujoco.mj_fwdPosition(model, data)
            mujoco.mj_fwdVelocity(model, data)
        else:
            mujoco.mj_forward(model, data)
        last[:] = now
        passes += 1

    step = env.step

    def controlled_step(action: Any) -> Any:
        nonlocal stepping, passes
        stepping, passes = True, 0
        try:
            return step(action)
        finally:
            stepping = False

    sim.forward = forward
    env.step = controlled_step


def uninstall(env: Any) -> None:
    """robosuite's own `forward` and `step` again (the instance attributes removed)."""
    for owner, name in ((env.sim, "forward"), (env, "step")):
        if name in vars(owner):
            delattr(owner, name)
