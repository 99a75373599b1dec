"""openpi's LeRobot conversion of LIBERO: parquet rows with `image`, `wrist_image`, `state` [8],
`actions` [7], `episode_index`, `frame_index`, and the task as `task` text or `task_index`.

LeRobot v2 stores the task text in `meta/tasks.jsonl` next to `data/`; it is looked up when
the rows carry only `task_index`. Images are PNG/JPEG bytes (`{"bytes": ..., "path": ...}`)
and are decoded only when asked for.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from energy_rerank.rollouts.episode import Episode, RolloutFormatError

REQUIRED_COLUMNS = ("state", "actions", "episode_index")
IMAGE_COLUMNS = ("image", "wrist_image")


def read_lerobot_parquet(
    paths: Sequence[str | Path], load_images: bool = False, state_dim: int = 8, action_dim: int = 7
) -> list[Episode]:
    """Episodes from one or more parquet files, ordered by (episode_index, frame_index).

    The LeRobot `state` becomes obs["state"] [T, 8]; images (when loaded) obs["image"] and
    obs["wrist_image"] as uint8 [T, h, w, 3].
    """
    rows: dict[int, list[dict[str, Any]]] = {}
    task_names: dict[int, str] = {}
    for path in map(Path, paths):
        if not path.is_file():
            raise FileNotFoundError(f"parquet file not found: {path}")
        table = pq.read_table(path)  # read-only; the file is never touched
        missing = [c for c in REQUIRED_COLUMNS if c not in table.column_names]
        if missing:
            raise RolloutFormatError(f"{path}: missing column(s) {missing}; present: {table.column_names}")
        wanted = [
            c for c in table.column_names if c in IMAGE_COLUMNS and load_images or c not in IMAGE_COLUMNS
        ]
        for row in table.select(wanted).to_pylist():
            rows.setdefault(int(row["episode_index"]), []).append(row)
        task_names.update(_tasks_jsonl(path))
    episodes = []
    for idx in sorted(rows):
        ep_rows = sorted(rows[idx], key=lambda r: int(r.get("frame_index", 0)))
        name = f"episode_{idx}"
        state = _stack(ep_rows, "state", state_dim, name)
        actions = _stack(ep_rows, "actions", action_dim, name)
        obs = {"state": state}
        if load_images:
            for col in IMAGE_COLUMNS:
                if col in ep_rows[0]:
                    obs[col] = np.stack([decode_image_cell(r[col]) for r in ep_rows])
        first = ep_rows[0]
        text = first.get("task") or task_names.get(int(first.get("task_index", -1)), "")
        task = f"task_{first['task_index']}" if "task_index" in first else str(text)
        episodes.append(Episode(actions=actions, obs=obs, instruction=str(text), task=task, name=name))
    return episodes


def _stack(rows: list[dict[str, Any]], col: str, dim: int, name: str) -> np.ndarray:
    arr = np.asarray([r[col] for r in rows], dtype=np.float32)
    if arr.ndim != 2 or arr.shape[1] != dim:
        raise RolloutFormatError(f"{name}: column '{col}' must be [T, {dim}] per episode, got {arr.shape}")
    return arr


def decode_image_cell(cell: Any) -> np.ndarray:
    """A LeRobot image cell (PNG/JPEG bytes, or {"bytes": ..., "path": ...}) -> uint8 [h, w, 3]."""
    from PIL import Image  # only needed when images are asked for

    data = cell["bytes"] if isinstance(cell, dict) else cell
    if not isinstance(data, (bytes, bytearray)):
        raise RolloutFormatError(f"image cell must hold encoded bytes, got {type(data).__name__}")
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.uint8)


def _tasks_jsonl(path: Path) -> dict[int, str]:
    """task_index -> text from a LeRobot v2 `meta/tasks.jsonl` above the parquet file, if any."""
    for parent in path.parents:
        meta = parent / "meta" / "tasks.jsonl"
        if meta.is_file():
            lines = (json.loads(line) for line in meta.read_text().splitlines() if line.strip())
            return {int(d["task_index"]): str(d["task"]) for d in lines}
    return {}
