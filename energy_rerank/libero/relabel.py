"""The scripted expert's answer at any visited state: label chunks and take-overs.

A head that is to help a policy must learn where the policy goes, so its training labels have
to come from states the expert never produced. Both functions restore a recorded MuJoCo state
(and the gripper's commanded position, which MuJoCo's state lacks, when it is known) into a
simulator of the same task, let `PickPlaceExpert.resume` read the phase from it, and run
the script from there without its per-episode randomness (`LABEL_EXPERT`):

  expert_label(sim, state, H)       the H actions the expert executes from the state: [H, 7]
  expert_takeover(sim, state, T)    whether the expert, taking over there, solves the task in T steps

The simulator is left wherever the expert took it: pass a scratch simulator (or restore the state
afterwards) when a rollout continues from the same state.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from energy_rerank.libero.expert import LABEL_EXPERT, ExpertConfig, PickPlaceExpert
from energy_rerank.libero.sim import LiberoSim


def expert_label(
    sim: LiberoSim,
    state: np.ndarray,
    chunk_len: int,
    config: ExpertConfig = LABEL_EXPERT,
    gripper_command: np.ndarray | None = None,
) -> np.ndarray:
    """The expert's chunk [H, 7] from a recorded state (the task's own success does not cut it short).
    gripper_command: the rollout's commanded finger position when known (`LiberoSim.set_state`)."""
    if chunk_len < 1:
        raise ValueError(f"chunk_len must be >= 1, got {chunk_len}")
    obs = sim.set_state(state, gripper_command)
    expert = PickPlaceExpert.resume(sim, obs["ee_pos"], config)
    actions = []
    for _ in range(chunk_len):
        action = expert.act(obs["ee_pos"])
        actions.append(action)
        obs, _ = sim.step(action)
    return np.stack(actions)  # [H, 7]


@dataclass(frozen=True)
class Takeover:
    """The expert continuing from one visited state."""

    success: bool  # the task's goal held within the step budget
    steps: int  # control steps the expert took
    phase: str  # the phase it inferred at the state


def expert_takeover(
    sim: LiberoSim, state: np.ndarray, max_steps: int, config: ExpertConfig = LABEL_EXPERT
) -> Takeover:
    """Run the resumed expert from `state` until success or `max_steps` control steps."""
    obs = sim.set_state(state)
    expert = PickPlaceExpert.resume(sim, obs["ee_pos"], config)
    phase = expert.phase_name
    if sim.success():
        return Takeover(True, 0, phase)
    for step in range(1, max_steps + 1):
        obs, success = sim.step(expert.act(obs["ee_pos"]))
        if success:
            return Takeover(True, step, phase)
    return Takeover(False, max_steps, phase)
