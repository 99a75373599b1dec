"""Client-side picks among the server's N candidates, the yardsticks of a head in closed loop.

  random   a uniform random one of the N (seeded by the request seed): what N costs or gains
           without any scoring; a head that does no better than this ranks nothing
  oracle   the one nearest the scripted expert's label chunk from the current simulator state, by
           the project's chunk L1 (mean |a - b| over steps and action dims, robot units): the most
           success any head can reach with these candidates

Both are `controller.Chooser`s: (candidates [N, H, A], request seed) -> index.
"""

from __future__ import annotations

import numpy as np

from energy_rerank.libero.relabel import expert_label
from energy_rerank.libero.sim import LiberoSim

SELECTORS = ("head", "random", "oracle")  # head: the server's own pick (energy argmin at its margin)


def chunk_l1(candidates: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Mean absolute difference of every candidate [N, H, A] to a target chunk [H, A] -> [N]."""
    return np.abs(np.asarray(candidates, np.float64) - np.asarray(target, np.float64)[None]).mean(axis=(1, 2))


def nearest_candidate(candidates: np.ndarray, label: np.ndarray) -> int:
    """Index of the candidate [N, H, A] nearest the label [H, A] (ties: the lowest index, the policy's own)."""
    return int(np.argmin(chunk_l1(candidates, label)))


def random_choice(candidates: np.ndarray, seed: int) -> int:
    """A uniform random index among the N, the same for the same request seed."""
    return int(np.random.default_rng(seed).integers(len(candidates)))


class OracleChooser:
    """Nearest the expert's label from the rollout's current state, labelled in a scratch simulator.

    `rollout` is the simulator the episode runs in (read, never stepped); `scratch` is a second
    simulator of the same task that the expert may step. The controller must ask for chunks
    synchronously (no prefetch), so that the rollout's state is the one the request observed.
    """

    def __init__(self, rollout: LiberoSim, scratch: LiberoSim) -> None:
        if rollout.config.task_name != scratch.config.task_name:
            raise ValueError(
                f"oracle: the scratch simulator runs {scratch.config.task_name}, the rollout {rollout.config.task_name}"
            )
        self.rollout, self.scratch = rollout, scratch

    def __call__(self, candidates: np.ndarray, seed: int) -> int:
        state, command = self.rollout.get_state(), self.rollout.gripper_command
        label = expert_label(self.scratch, state, candidates.shape[1], gripper_command=command)  # [H, 7]
        return nearest_candidate(candidates, label)
