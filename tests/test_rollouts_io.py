"""Rollout IO on tiny generated files: LIBERO HDF5 round trip, LeRobot parquet, bad input."""

from __future__ import annotations

import hashlib
import io
import json

import h5py
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from energy_rerank.rollouts import (
    Episode,
    RolloutFormatError,
    read_file_attrs,
    read_hdf5,
    read_lerobot_parquet,
    write_hdf5,
)


def _episode(t: int, seed: int, images: bool = False) -> Episode:
    rng = np.random.default_rng(seed)
    obs = {
        "ee_pos": rng.normal(size=(t, 3)),
        "ee_ori": rng.normal(size=(t, 3)),
        "ee_states": rng.normal(size=(t, 6)),
        "gripper_states": rng.normal(size=(t, 2)),
        "joint_states": rng.normal(size=(t, 7)),
        "object_states": rng.normal(size=(t, 14)),
    }
    if images:
        obs["agentview_rgb"] = rng.integers(0, 255, size=(t, 8, 8, 3), dtype=np.uint8)
    return Episode(
        actions=rng.uniform(-1, 1, size=(t, 7)).astype(np.float32),
        obs=obs,
        states=rng.normal(size=(t, 20)),
        rewards=np.zeros(t, np.float32),
        dones=np.r_[np.zeros(t - 1), 1].astype(np.uint8),
        instruction="pick up the ketchup and place it in the basket",
        task="libero_object/3",
    )


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_hdf5_round_trip_with_standard_keys(tmp_path):
    eps = [_episode(5, 0, images=True), _episode(9, 1, images=True)]
    path = write_hdf5(tmp_path / "demo.hdf5", eps, attrs={"env_args": {"env_name": "x"}})
    with h5py.File(path, "r") as f:  # plain h5py, as any LIBERO tool would read it
        assert sorted(f["data"].keys()) == ["demo_0", "demo_1"]
        demo = f["data/demo_1"]
        for key in ("actions", "states", "robot_states", "rewards", "dones"):
            assert key in demo, key
        for key in ("ee_pos", "ee_ori", "ee_states", "gripper_states", "joint_states", "agentview_rgb"):
            assert key in demo["obs"], key
        assert demo["actions"].shape == (9, 7)
        assert f["data"].attrs["num_demos"] == 2 and f["data"].attrs["total"] == 14
        assert json.loads(f["data"].attrs["problem_info"])["language_instruction"] == eps[0].instruction
    back = read_hdf5(path)
    for a, b in zip(eps, back, strict=True):
        np.testing.assert_allclose(a.actions, b.actions)
        np.testing.assert_array_equal(a.states, b.states)
        np.testing.assert_array_equal(a.obs["agentview_rgb"], b.obs["agentview_rgb"])
        assert b.instruction == a.instruction and b.task == "libero_object/3"
    assert read_file_attrs(path)["env_args"] == {"env_name": "x"}


def test_hdf5_demo_order_is_numeric_and_reading_leaves_file_untouched(tmp_path):
    path = write_hdf5(tmp_path / "d.hdf5", [_episode(2 + i, i) for i in range(11)])
    before = _sha(path)
    names = [ep.name for ep in read_hdf5(path, obs_keys=["ee_pos"])]
    assert names == [f"demo_{i}" for i in range(11)]
    assert _sha(path) == before
    with pytest.raises(FileExistsError):
        write_hdf5(path, [_episode(3, 0)])


def test_hdf5_missing_keys_are_named(tmp_path):
    path = write_hdf5(tmp_path / "d.hdf5", [_episode(4, 0)])
    with pytest.raises(RolloutFormatError, match="obs/agentview_rgb is missing"):
        read_hdf5(path, required_obs=["agentview_rgb"])
    with h5py.File(tmp_path / "noact.hdf5", "w") as f:
        f.create_group("data/demo_0/obs")
    with pytest.raises(RolloutFormatError, match="no 'actions'"):
        read_hdf5(tmp_path / "noact.hdf5")
    with h5py.File(tmp_path / "nodata.hdf5", "w") as f:
        f.create_group("stuff")
    with pytest.raises(RolloutFormatError, match="no top-level 'data'"):
        read_hdf5(tmp_path / "nodata.hdf5")


def test_shape_mismatch_is_reported(tmp_path):
    with h5py.File(tmp_path / "bad.hdf5", "w") as f:
        f.create_dataset("data/demo_0/actions", data=np.zeros((5, 7)))
        f.create_dataset("data/demo_0/obs/ee_pos", data=np.zeros((4, 3)))
    with pytest.raises(RolloutFormatError, match=r"obs/ee_pos has 4 steps, actions have 5"):
        read_hdf5(tmp_path / "bad.hdf5")
    with pytest.raises(RolloutFormatError, match=r"actions must be \[T, A\]"):
        Episode(actions=np.zeros(5))


def _png(rgb: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def test_lerobot_parquet(tmp_path):
    rng = np.random.default_rng(0)
    rows = []
    for ep, t in ((1, 3), (0, 4)):
        for i in reversed(range(t)):  # frames out of order on disk: the reader sorts them
            img = np.full((6, 6, 3), 10 * i + ep, np.uint8)
            rows.append(
                {
                    "image": {"bytes": _png(img), "path": None},
                    "wrist_image": {"bytes": _png(img), "path": None},
                    "state": rng.normal(size=8).astype(np.float32).tolist(),
                    "actions": [float(i)] * 7,
                    "episode_index": ep,
                    "frame_index": i,
                    "task_index": ep,
                }
            )
    (tmp_path / "meta").mkdir()
    (tmp_path / "meta" / "tasks.jsonl").write_text(
        "\n".join(json.dumps({"task_index": k, "task": f"task text {k}"}) for k in (0, 1))
    )
    (tmp_path / "data").mkdir()
    path = tmp_path / "data" / "episode_000.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    eps = read_lerobot_parquet([path], load_images=True)
    assert [e.length for e in eps] == [4, 3]
    np.testing.assert_array_equal(eps[0].actions[:, 0], [0, 1, 2, 3])
    assert eps[1].instruction == "task text 1"
    assert eps[1].obs["image"].shape == (3, 6, 6, 3) and eps[1].obs["image"][2, 0, 0, 0] == 21
    assert "image" not in read_lerobot_parquet([path])[0].obs

    pq.write_table(pa.Table.from_pylist([{k: v for k, v in r.items() if k != "state"} for r in rows]), path)
    with pytest.raises(RolloutFormatError, match=r"missing column\(s\) \['state'\]"):
        read_lerobot_parquet([path])


def test_windows_layout_and_end_padding():
    from energy_rerank.rollouts.windows import LOWDIM_DIM, episode_windows, expert_chunk, step_observation

    ep = _episode(5, 3, images=True)
    ep.obs["interest_states"] = np.arange(5 * 14, dtype=np.float64).reshape(5, 14)
    chunk = expert_chunk(ep, 3, chunk_len=4)
    np.testing.assert_array_equal(chunk, ep.actions[[3, 4, 4, 4]])  # past the end the last action repeats
    obs = step_observation(ep, 2)
    assert obs.lowdim.shape == (LOWDIM_DIM,) and obs.state.shape == (8,)
    np.testing.assert_allclose(obs.lowdim[:14], ep.obs["interest_states"][2])
    np.testing.assert_allclose(obs.lowdim[14:17], ep.obs["ee_pos"][2], rtol=1e-6)
    np.testing.assert_allclose(obs.state[6:], ep.obs["gripper_states"][2], rtol=1e-6)
    assert obs.images["agentview"].shape == (8, 8, 3) and obs.instruction == ep.instruction
    win = episode_windows([ep, ep], chunk_len=4, stride=2)
    assert win.chunks.shape == (6, 4, 7) and win.episode.tolist() == [0, 0, 0, 1, 1, 1]
    assert not win.observations[0].images  # images only on request
    del ep.obs["ee_ori"]
    with pytest.raises(RolloutFormatError, match=r"\['ee_ori'\]"):
        step_observation(ep, 0)


def test_on_policy_rollouts_teach_the_expert_label_mixed_with_demos(tmp_path):
    """A rollout step carrying obs/expert_label is learnt as that label (what should have been done
    from the visited state), a demonstration step as its recorded a[t:t+H]; both through --data."""
    from energy_rerank.data import load_data
    from energy_rerank.rollouts.windows import LABEL_KEY

    demo = _episode(6, 0)
    demo.obs["interest_states"] = np.zeros((6, 14))
    rollout = _episode(5, 1)
    rollout.obs["interest_states"] = np.zeros((5, 14))
    labels = np.random.default_rng(2).uniform(-1, 1, size=(5, 8, 7)).astype(np.float32)  # [T, H, A]
    rollout.obs[LABEL_KEY] = labels
    write_hdf5(tmp_path / "demos.hdf5", [demo])
    write_hdf5(tmp_path / "rollouts.hdf5", [rollout])
    data = load_data([str(tmp_path / "demos.hdf5"), str(tmp_path / "rollouts.hdf5")], chunk_len=4)
    w = data.windows
    assert len(w) == 6 + 5 and sorted(set(w.episode.tolist())) == [0, 1]
    np.testing.assert_allclose(w.chunks[:6][0], demo.actions[:4])  # the demo: recorded actions
    np.testing.assert_allclose(w.chunks[6:], labels[:, :4])  # the rollout: the expert's labels
    assert not np.allclose(w.chunks[6], rollout.actions[:4])
    assert all(LABEL_KEY not in vars(o) for o in w.observations)
    labels[1::2] = np.nan  # collected with --label-every 2: the unlabelled steps make no window
    rollout.obs[LABEL_KEY] = labels
    write_hdf5(tmp_path / "rollouts.hdf5", [rollout], overwrite=True)
    w = load_data([str(tmp_path / "rollouts.hdf5")], chunk_len=4).windows
    assert w.step.tolist() == [0, 2, 4]
    np.testing.assert_allclose(w.chunks, labels[::2, :4])


def test_failed_steps_cuts_only_failed_on_policy_rollouts(tmp_path):
    """--failed-steps K: a failed rollout teaches only its first K steps; a rollout that succeeded
    and a demonstration (no labels) keep every step."""
    from energy_rerank.data import load_data
    from energy_rerank.rollouts.windows import LABEL_KEY

    def rollout(seed: int, success: bool) -> Episode:
        ep = _episode(6, seed)
        ep.obs["interest_states"] = np.zeros((6, 14))
        ep.obs[LABEL_KEY] = np.random.default_rng(seed).uniform(-1, 1, size=(6, 8, 7)).astype(np.float32)
        ep.dones = np.r_[np.zeros(5), int(success)].astype(np.uint8)
        return ep

    demo = _episode(6, 9)
    demo.obs["interest_states"] = np.zeros((6, 14))
    demo.dones = np.zeros(6, np.uint8)  # no labels: a demonstration, never cut
    write_hdf5(tmp_path / "r.hdf5", [rollout(1, False), rollout(2, True)])
    write_hdf5(tmp_path / "d.hdf5", [demo])
    files = [str(tmp_path / "r.hdf5"), str(tmp_path / "d.hdf5")]
    every = load_data(files, chunk_len=4).windows
    cut = load_data(files, chunk_len=4, failed_steps=2).windows
    assert every.step.tolist() == list(range(6)) * 3
    assert cut.step.tolist() == [0, 1] + list(range(6)) * 2
    np.testing.assert_array_equal(cut.episode, [0, 0] + [1] * 6 + [2] * 6)
    with pytest.raises(ValueError, match="failed_steps"):
        load_data(files, chunk_len=4, failed_steps=0)
