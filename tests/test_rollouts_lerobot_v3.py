"""LeRobot v3 datasets as a --data source: the test writes the same LIBERO episodes as LIBERO HDF5
and as a LeRobot v3 dataset in LeRobot's documented layout (meta/info.json, meta/tasks.parquet,
meta/episodes/chunk-*/file-*.parquet, data/chunk-*/file-*.parquet with several episodes per file
and PNG image cells), and both must give identical training windows."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from energy_rerank.data import expand_paths, load_data
from energy_rerank.rollouts import (
    Episode,
    RolloutFormatError,
    is_lerobot_v3,
    read_hdf5,
    read_lerobot_v3,
    write_hdf5,
)

DEMOS = Path(__file__).parent / "data" / "libero_object_task0_2demos.hdf5"
STATE_KEYS = ("ee_pos", "ee_ori", "gripper_states")  # openpi's 8-D LIBERO state, as LeRobot stores it
SIZE = 16  # image side: small, but real PNGs


def libero_episodes() -> list[Episode]:
    """The committed demos (plus a shortened copy, for a second data file) with camera frames."""
    rng = np.random.default_rng(0)
    episodes = []
    for i, ep in enumerate([*read_hdf5(DEMOS), read_hdf5(DEMOS)[0]]):
        t = ep.length if i < 2 else 50
        obs = {k: ep.obs[k][:t] for k in (*STATE_KEYS, "joint_states")}
        obs["agentview_rgb"] = rng.integers(0, 256, (t, SIZE, SIZE, 3), dtype=np.uint8)
        obs["eye_in_hand_rgb"] = rng.integers(0, 256, (t, SIZE, SIZE, 3), dtype=np.uint8)
        episodes.append(Episode(actions=ep.actions[:t], obs=obs, instruction=ep.instruction, task=ep.task, name=f"demo_{i}"))
    return episodes


def png(frame: np.ndarray) -> dict[str, object]:
    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="PNG")
    return {"bytes": buf.getvalue(), "path": None}


def write_lerobot_v3(root: Path, episodes: list[Episode], files: list[int]) -> Path:
    """LeRobot v3's layout; episode i goes to data/chunk-000/file-{files[i]:03d}.parquet."""
    state_dim = 8
    features = {
        "observation.state": {"dtype": "float32", "shape": [state_dim], "names": None},
        "action": {"dtype": "float32", "shape": [7], "names": None},
        "observation.images.image": {"dtype": "image", "shape": [SIZE, SIZE, 3], "names": ["height", "width", "channel"]},
        "observation.images.wrist_image": {"dtype": "image", "shape": [SIZE, SIZE, 3], "names": ["height", "width", "channel"]},
        "timestamp": {"dtype": "float32", "shape": [1], "names": None},
        "frame_index": {"dtype": "int64", "shape": [1], "names": None},
        "episode_index": {"dtype": "int64", "shape": [1], "names": None},
        "index": {"dtype": "int64", "shape": [1], "names": None},
        "task_index": {"dtype": "int64", "shape": [1], "names": None},
    }  # fmt: skip
    total = sum(e.length for e in episodes)
    info = {
        "codebase_version": "v3.0", "robot_type": "panda", "total_episodes": len(episodes), "total_frames": total,
        "total_tasks": 1, "chunks_size": 1000, "data_files_size_in_mb": 100, "video_files_size_in_mb": 500, "fps": 20,
        "splits": {"train": f"0:{len(episodes)}"},
        "data_path": "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet",
        "video_path": "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4", "features": features,
    }  # fmt: skip
    (root / "meta").mkdir(parents=True)
    (root / "meta" / "info.json").write_text(json.dumps(info, indent=4))
    pq.write_table(pa.table({"task_index": [0], "task": [episodes[0].instruction]}), root / "meta" / "tasks.parquet")
    rows: dict[int, list[dict[str, object]]] = {}
    meta = []
    index = 0
    for e, (ep, f) in enumerate(zip(episodes, files, strict=True)):
        state = np.concatenate([ep.obs[k] for k in STATE_KEYS], axis=1)
        start = index
        for t in range(ep.length):
            rows.setdefault(f, []).append({
                "observation.state": state[t].tolist(), "action": ep.actions[t].tolist(),
                "observation.images.image": png(ep.obs["agentview_rgb"][t]),
                "observation.images.wrist_image": png(ep.obs["eye_in_hand_rgb"][t]),
                "timestamp": t / 20, "frame_index": t, "episode_index": e, "index": index, "task_index": 0,
            })  # fmt: skip
            index += 1
        meta.append({"episode_index": e, "tasks": [ep.instruction], "length": ep.length, "data/chunk_index": 0,
                     "data/file_index": f, "dataset_from_index": start, "dataset_to_index": index})  # fmt: skip
    for f, frame_rows in rows.items():
        path = root / "data" / "chunk-000" / f"file-{f:03d}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        order = np.random.default_rng(f).permutation(len(frame_rows))  # the reader sorts by frame_index
        pq.write_table(pa.Table.from_pylist([frame_rows[i] for i in order]), path)
    for k, part in enumerate((meta[:2], meta[2:])):  # episode metadata over two files too
        path = root / "meta" / "episodes" / "chunk-000" / f"file-{k:03d}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(part), path)
    return root


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> tuple[str, str]:
    root = tmp_path_factory.mktemp("v3")
    episodes = libero_episodes()
    hdf5 = write_hdf5(root / "demos.hdf5", episodes)
    return str(hdf5), str(write_lerobot_v3(root / "lerobot_v3", episodes, files=[0, 0, 1]))


@pytest.mark.parametrize("images", [False, True])
def test_lerobot_v3_windows_identical_to_hdf5(sources, images):
    hdf5, v3 = sources
    a = load_data([hdf5], chunk_len=8, images=images).windows
    b = load_data([v3], chunk_len=8, images=images).windows
    assert len(a.observations) == len(b.observations) == 131 + 131 + 50
    assert np.array_equal(a.chunks, b.chunks) and a.chunks.dtype == b.chunks.dtype
    assert np.array_equal(a.episode, b.episode) and np.array_equal(a.step, b.step)
    for x, y in zip(a.observations, b.observations, strict=True):
        assert np.array_equal(x.state, y.state) and x.lowdim is None and y.lowdim is None
        assert x.instruction == y.instruction == "pick up the alphabet soup and place it in the basket"
        assert x.images.keys() == y.images.keys() == ({"agentview", "eye_in_hand"} if images else set())
        assert all(np.array_equal(x.images[c], y.images[c]) for c in x.images)


def test_lerobot_v3_is_one_data_entry(sources, tmp_path):
    _, v3 = sources
    assert is_lerobot_v3(v3) and expand_paths(v3) == [v3]
    episodes = read_lerobot_v3(v3)
    assert [e.name for e in episodes] == ["episode_0", "episode_1", "episode_2"] and episodes[0].task == "task_0"
    v2 = tmp_path / "v2"
    (v2 / "meta").mkdir(parents=True)
    (v2 / "meta" / "info.json").write_text(json.dumps({"codebase_version": "v2.1", "features": {}}))
    assert not is_lerobot_v3(v2)
    with pytest.raises(RolloutFormatError, match="expected v3.x"):
        read_lerobot_v3(v2)


def test_video_features_refused_only_when_images_are_read(sources, tmp_path):
    _, v3 = sources
    root = tmp_path / "video"
    for path in Path(v3).rglob("*"):
        if path.is_file():
            (root / path.relative_to(v3)).parent.mkdir(parents=True, exist_ok=True)
            (root / path.relative_to(v3)).write_bytes(path.read_bytes())
    info = json.loads((root / "meta" / "info.json").read_text())
    info["features"]["observation.images.image"]["dtype"] = "video"
    (root / "meta" / "info.json").write_text(json.dumps(info))
    assert len(read_lerobot_v3(root)) == 3
    with pytest.raises(RolloutFormatError, match=r"\['observation.images.image'\] are stored as video"):
        read_lerobot_v3(root, load_images=True)
