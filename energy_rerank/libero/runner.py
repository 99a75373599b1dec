"""Run one LIBERO episode under the standard protocol with any chunk-producing controller.

Protocol: restore a fixed init state, WAIT_STEPS no-op steps (not recorded), then ask
`chunk_fn(observation) -> chunk [H, 7]` for actions, execute the first `execute_steps` of
each chunk, and stop at task success or the suite's max steps. The scripted expert, the
offline policy and a client of the serving stack all plug in as `chunk_fn`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from energy_rerank.libero.sim import NOOP, WAIT_STEPS, LiberoSim
from energy_rerank.policy.base import Observation
from energy_rerank.rollouts.episode import Episode
from energy_rerank.rollouts.windows import observation_from_dict

ChunkFn = Callable[[Observation], np.ndarray]  # observation -> chunk [H, 7] in robot units


@dataclass
class EpisodeResult:
    """What happened in one episode."""

    success: bool  # the task's goal predicate held before max steps
    steps: int  # control steps taken after the wait steps
    init_index: int  # which fixed init state it started from
    episode: Episode | None  # the recorded rollout (obs before each action), if recording


def run_episode(
    sim: LiberoSim,
    chunk_fn: ChunkFn,
    init_index: int,
    execute_steps: int | None = None,
    max_steps: int | None = None,
    record: bool = True,
) -> EpisodeResult:
    """One episode from init state `init_index`; execute_steps=None runs whole chunks."""
    max_steps = max_steps or sim.config.max_steps
    raw = sim.reset(init_index)
    for _ in range(WAIT_STEPS):
        raw, _ = sim.step(NOOP)
    frames: list[dict[str, np.ndarray]] = []
    states, actions = [], []
    steps, success = 0, False
    while steps < max_steps and not success:
        chunk = np.asarray(chunk_fn(observation_from_dict(raw, sim.instruction)), dtype=np.float32)
        if chunk.ndim != 2 or chunk.shape[1] != 7 or chunk.shape[0] < 1:
            raise ValueError(f"chunk_fn must return a chunk [H, 7], got {chunk.shape}")
        for action in chunk[: execute_steps or len(chunk)]:
            if record:
                frames.append(raw)
                states.append(sim.get_state())
                actions.append(action)
            raw, success = sim.step(action)
            steps += 1
            if success or steps >= max_steps:
                break
    episode = None
    if record:
        dones = np.zeros(steps, np.uint8)
        dones[-1] = success
        episode = Episode(
            actions=np.stack(actions),  # [T, 7]
            obs={k: np.stack([f[k] for f in frames]) for k in frames[0]},  # key -> [T, ...]
            states=np.stack(states),  # [T, S]
            rewards=dones.astype(np.float32),  # LIBERO's sparse reward: 1 on the success step
            dones=dones,
            instruction=sim.instruction,
            task=sim.config.task_name,
            name=f"init_{init_index}",
        )
    return EpisodeResult(success=success, steps=steps, init_index=init_index, episode=episode)
