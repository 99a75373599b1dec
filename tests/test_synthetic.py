"""The synthetic task: deterministic episodes, and an expert that needs both instruction and state."""

from __future__ import annotations

import numpy as np
import pytest

from energy_rerank.synthetic import ACTION_DIM, GRIPPER_DIM, SyntheticConfig, SyntheticTask


def test_episodes_are_deterministic_by_seed_and_index() -> None:
    task = SyntheticTask()
    a, b = task.episodes(3, seed=5), task.episodes(5, seed=5)
    for x, y in zip(a, b[:3], strict=True):
        assert x.instruction == y.instruction and np.array_equal(x.actions, y.actions)
    other = task.episodes(3, seed=6)
    assert not all(np.array_equal(x.lowdim, y.lowdim) for x, y in zip(a, other, strict=True))


def test_windows_shapes_and_contents() -> None:
    task = SyntheticTask(SyntheticConfig(image_size=16))
    eps = task.episodes(2, seed=0)
    w = task.windows(eps)
    t, h = task.config.episode_len, task.chunk_len
    assert len(w) == 2 * t and w.chunks.shape == (2 * t, h, ACTION_DIM)
    obs = w.observations[t + 3]
    assert obs.lowdim.shape == (task.lowdim_dim,) and obs.state.shape == (7,)
    assert obs.images["agentview"].shape == (16, 16, 3) and obs.images["agentview"].dtype == np.uint8
    assert np.array_equal(w.chunks[t + 3], eps[1].actions[3 : 3 + h])
    assert obs.instruction == eps[1].instruction and w.episode[t + 3] == 1 and w.step[t + 3] == 3
    assert set(np.unique(w.chunks[..., GRIPPER_DIM]).tolist()) <= {-1.0, 1.0}
    assert np.abs(w.chunks).max() <= 1.0


def test_instruction_names_the_target_and_the_expert_completes_it() -> None:
    task = SyntheticTask(SyntheticConfig(episode_len=48))
    eps = task.episodes(10, seed=0)
    for ep in eps:
        assert task.target_of(ep.instruction) == ep.target
    assert np.mean([task.is_success(ep.lowdim[-1], ep.target) for ep in eps]) >= 0.9
    with pytest.raises(ValueError, match="names none"):
        task.target_of("go somewhere")


def test_expert_chunk_depends_on_instruction_and_on_state() -> None:
    task = SyntheticTask()
    s = task.initial_state(np.random.default_rng(0))
    by_target = [task.expert_chunk(s, k) for k in range(task.config.num_targets)]
    assert all(np.abs(by_target[0] - other).mean() > 0.05 for other in by_target[1:])
    moved = s.copy()
    moved[7:10] += 0.5  # move target 0
    assert np.abs(task.expert_chunk(moved, 0) - by_target[0]).mean() > 0.05
    assert np.allclose(task.expert_chunk(moved, 1), by_target[1])  # other targets' chunks unchanged


def test_make_observation_checks_the_state_shape() -> None:
    task = SyntheticTask()
    with pytest.raises(ValueError, match="lowdim must be"):
        task.make_observation(np.zeros(5), "reach the red block")
