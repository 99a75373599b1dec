"""LeRobot datasets v3 (`codebase_version` "v3.x") from local disk, without the `lerobot` package.

The layout, as LeRobot writes it:
  meta/info.json                              features (name -> dtype, shape), `data_path` template
  meta/tasks.parquet                          task text -> `task_index` (the text is the pandas index,
                                              stored as a `task` or `__index_level_0__` column)
  meta/episodes/chunk-*/file-*.parquet        one row per episode: `episode_index`, `length`,
                                              `data/chunk_index`, `data/file_index`, ...
  data/chunk-*/file-*.parquet                 one row per frame, many episodes per file:
                                              `episode_index`, `frame_index`, the features
Each episode becomes an `Episode` as the v2 reader (`rollouts/parquet.py`) makes them: the state
feature (`observation.state`, or `state`) as obs["state"] [T, S], the action feature (`action`,
or `actions`) as the actions [T, A], the task text as the instruction and `task_<index>` as the
task label. Image features (`observation.images.<name>`, dtype "image": PNG/JPEG bytes in the data
files) are decoded only when asked for, as obs[<name>] uint8 [T, h, w, 3] (openpi's `image` and
`wrist_image` are the cameras the policies read, rollouts/windows.py). Features stored as "video"
(mp4) cannot be decoded here: reading them with images asked for is an error naming them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from energy_rerank.rollouts.episode import Episode, RolloutFormatError
from energy_rerank.rollouts.parquet import decode_image_cell

INFO_PATH = "meta/info.json"
TASKS_PATH = "meta/tasks.parquet"
EPISODES_GLOB = "meta/episodes/chunk-*/file-*.parquet"
DEFAULT_DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
STATE_FEATURES = ("observation.state", "state")  # the first present is the state
ACTION_FEATURES = ("action", "actions")  # the first present is the action
IMAGE_PREFIX = "observation.images."


def is_lerobot_v3(path: str | Path) -> bool:
    """Whether `path` is the root of a LeRobot v3 dataset (its meta/info.json says v3)."""
    info = Path(path) / INFO_PATH
    if not info.is_file():
        return False
    try:
        version = json.loads(info.read_text()).get("codebase_version", "")
    except (ValueError, AttributeError):
        return False
    return isinstance(version, str) and version.startswith("v3")


def read_lerobot_v3(root: str | Path, load_images: bool = False) -> list[Episode]:
    """Every episode of the dataset at `root`, ordered by episode_index."""
    root = Path(root)
    info = _info(root)
    features: dict[str, Any] = info["features"]
    state_key = _first(features, STATE_FEATURES, root)
    action_key = _first(features, ACTION_FEATURES, root)
    cameras = [k for k, f in features.items() if isinstance(f, dict) and f.get("dtype") in ("image", "video")]
    if load_images:
        videos = [k for k in cameras if features[k]["dtype"] == "video"]
        if videos:
            raise RolloutFormatError(
                f"{root}: image features {videos} are stored as video (mp4), which this reader does not "
                "decode; read without images, or export the dataset with image features"
            )
    tasks = _tasks(root)
    template = str(info.get("data_path") or DEFAULT_DATA_PATH)
    columns = ["episode_index", "frame_index", state_key, action_key, "task_index", *(cameras if load_images else ())]
    by_file: dict[Path, list[int]] = {}
    for row in _episode_rows(root):
        path = root / template.format(chunk_index=int(row["data/chunk_index"]), file_index=int(row["data/file_index"]))
        by_file.setdefault(path, []).append(int(row["episode_index"]))
    episodes: dict[int, Episode] = {}
    for path, wanted in by_file.items():
        frames = _frames(path, columns, set(wanted))
        for index in wanted:
            rows = sorted(frames.get(index, []), key=lambda r: int(r["frame_index"]))
            if not rows:
                raise RolloutFormatError(f"{path}: no frames of episode {index}, which meta/episodes places there")
            episodes[index] = _episode(index, rows, state_key, action_key, cameras if load_images else [], features,
                                       tasks, root)  # fmt: skip
    if not episodes:
        raise RolloutFormatError(f"{root}: meta/episodes lists no episodes")
    return [episodes[i] for i in sorted(episodes)]


def _info(root: Path) -> dict[str, Any]:
    try:
        info = json.loads((root / INFO_PATH).read_text())
    except FileNotFoundError:
        raise RolloutFormatError(f"{root}: no {INFO_PATH} (not a LeRobot dataset)") from None
    version = info.get("codebase_version")
    if not (isinstance(version, str) and version.startswith("v3")):
        raise RolloutFormatError(
            f"{root}: codebase_version {version!r}, expected v3.x (give a v2 dataset's data/ parquet files instead)"
        )
    if not isinstance(info.get("features"), dict):
        raise RolloutFormatError(f"{root}/{INFO_PATH}: no 'features' object")
    return info


def _first(features: dict[str, Any], names: Iterable[str], root: Path) -> str:
    names = tuple(names)
    for name in names:
        if name in features:
            return name
    raise RolloutFormatError(f"{root}: none of the features {list(names)}; present: {sorted(features)}")


def _tasks(root: Path) -> dict[int, str]:
    """task_index -> text from meta/tasks.parquet ({} without one)."""
    path = root / TASKS_PATH
    if not path.is_file():
        return {}
    table = pq.read_table(path)
    text = next((c for c in ("task", "__index_level_0__") if c in table.column_names), None)
    if text is None or "task_index" not in table.column_names:
        raise RolloutFormatError(f"{path}: expected task text (the index) and task_index, got {table.column_names}")
    return {int(i): str(t) for i, t in zip(table.column("task_index").to_pylist(), table.column(text).to_pylist(),
                                            strict=True)}  # fmt: skip


def _episode_rows(root: Path) -> list[dict[str, Any]]:
    files = sorted(root.glob(EPISODES_GLOB))
    if not files:
        raise RolloutFormatError(f"{root}: no {EPISODES_GLOB}")
    need = ["episode_index", "data/chunk_index", "data/file_index"]
    rows: list[dict[str, Any]] = []
    for path in files:
        table = pq.read_table(path)
        missing = [c for c in need if c not in table.column_names]
        if missing:
            raise RolloutFormatError(f"{path}: missing column(s) {missing}")
        rows += table.select(need).to_pylist()
    return rows


def _frames(path: Path, columns: list[str], episodes: set[int]) -> dict[int, list[dict[str, Any]]]:
    if not path.is_file():
        raise RolloutFormatError(f"{path}: data file named by meta/episodes does not exist")
    table = pq.read_table(path)
    missing = [c for c in columns if c not in table.column_names and c != "task_index"]
    if missing:
        raise RolloutFormatError(f"{path}: missing column(s) {missing}; present: {table.column_names}")
    out: dict[int, list[dict[str, Any]]] = {}
    for row in table.select([c for c in columns if c in table.column_names]).to_pylist():
        if int(row["episode_index"]) in episodes:
            out.setdefault(int(row["episode_index"]), []).append(row)
    return out


def _episode(
    index: int,
    rows: list[dict[str, Any]],
    state_key: str,
    action_key: str,
    cameras: list[str],
    features: dict[str, Any],
    tasks: dict[int, str],
    root: Path,
) -> Episode:
    name = f"episode_{index}"
    obs = {"state": _stack(rows, state_key, features, name)}
    for key in cameras:
        obs[key.removeprefix(IMAGE_PREFIX)] = np.stack([_image(r[key], root) for r in rows])  # [T, h, w, 3]
    task_index = rows[0].get("task_index")
    return Episode(
        actions=_stack(rows, action_key, features, name),
        obs=obs,
        instruction=tasks.get(int(task_index), "") if task_index is not None else "",
        task=f"task_{task_index}" if task_index is not None else "",
        name=name,
    )


def _stack(rows: list[dict[str, Any]], key: str, features: dict[str, Any], name: str) -> np.ndarray:
    shape = tuple(features[key].get("shape") or ())
    arr = np.asarray([r[key] for r in rows], dtype=np.float32)
    if arr.ndim != 2 or (shape and arr.shape[1:] != shape):
        raise RolloutFormatError(f"{name}: feature '{key}' must be [T, {', '.join(map(str, shape))}], got {arr.shape}")
    return arr


def _image(cell: Any, root: Path) -> np.ndarray:
    """An image cell: embedded bytes, or a path relative to the dataset root."""
    if isinstance(cell, dict) and not cell.get("bytes") and cell.get("path"):
        cell = (root / str(cell["path"])).read_bytes()
    return decode_image_cell(cell)
