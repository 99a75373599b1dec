"""LIBERO's robomimic-style HDF5: `data/demo_i/{obs/..., actions, states, robot_states, rewards, dones}`.

File-level metadata lives in attributes of the `data` group as LIBERO writes them
(`problem_info` and `env_args` as JSON strings, `bddl_file_name`, `num_demos`, `total`), plus
`task` (our task id, e.g. "libero_object/3") when the project wrote the file. Reading opens
the file read-only, so an input file is never modified; writing refuses to replace a file
unless asked.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from energy_rerank.rollouts.episode import Episode, RolloutFormatError

# Keys LIBERO's own datasets carry; images are optional (state-based demos omit them).
STANDARD_OBS_KEYS = ("ee_pos", "ee_ori", "ee_states", "gripper_states", "joint_states")
IMAGE_OBS_KEYS = ("agentview_rgb", "eye_in_hand_rgb")
_DEMO = re.compile(r"^demo_(\d+)$")


def demo_names(path: str | Path) -> list[str]:
    """`demo_i` names in the file, sorted by i (not lexically: demo_10 after demo_9)."""
    with _open(path) as f:
        return _sorted_demos(f, path)


def read_file_attrs(path: str | Path) -> dict[str, Any]:
    """The `data` group's attributes, with JSON-string attributes decoded."""
    with _open(path) as f:
        return _decode_attrs(f["data"].attrs)


def iter_hdf5(
    path: str | Path,
    obs_keys: Sequence[str] | None = None,
    required_obs: Sequence[str] = (),
    demos: Sequence[str] | None = None,
) -> Iterator[Episode]:
    """Yield episodes one at a time (a LIBERO file with images can be larger than memory).

    obs_keys: observation keys to load (None = all; leave out image keys to skip decoding them).
    required_obs: keys that must exist in every demo; a missing one raises RolloutFormatError.
    demos: demo names to read (None = all, in numeric order).
    """
    with _open(path) as f:
        attrs = _decode_attrs(f["data"].attrs)
        problem = attrs.get("problem_info")
        problem = problem if isinstance(problem, dict) else {}
        instruction = str(problem.get("language_instruction", attrs.get("instruction", "")))
        task = str(attrs.get("task", problem.get("problem_name", Path(path).stem)))
        for name in demos if demos is not None else _sorted_demos(f, path):
            if name not in f["data"]:
                raise RolloutFormatError(f"{path}: no group data/{name}")
            g = f["data"][name]
            if "actions" not in g:
                raise RolloutFormatError(f"{path}: data/{name} has no 'actions' dataset (expected [T, A])")
            obs_grp = g["obs"] if "obs" in g else {}
            for key in required_obs:
                if key not in obs_grp:
                    raise RolloutFormatError(
                        f"{path}: data/{name}/obs/{key} is missing; present: {sorted(obs_grp.keys())}"
                    )
            keys = list(obs_grp.keys()) if obs_keys is None else [k for k in obs_keys if k in obs_grp]
            yield Episode(
                actions=np.asarray(g["actions"][()], dtype=np.float32),
                obs={k: np.asarray(obs_grp[k][()]) for k in keys},
                states=_opt(g, "states"),
                rewards=_opt(g, "rewards"),
                dones=_opt(g, "dones"),
                instruction=instruction,
                task=task,
                name=name,
            )


def read_hdf5(path: str | Path, **kwargs: Any) -> list[Episode]:
    """All episodes of a file (see `iter_hdf5` for the keyword arguments)."""
    return list(iter_hdf5(path, **kwargs))


def write_hdf5(
    path: str | Path,
    episodes: Sequence[Episode],
    attrs: dict[str, Any] | None = None,
    overwrite: bool = False,
    compress_images: bool = True,
) -> Path:
    """Write episodes as `data/demo_0 ... demo_{n-1}`; dict attributes are stored as JSON strings.

    LIBERO readers expect `problem_info.language_instruction`; it is filled from the first
    episode's instruction when `attrs` does not give it.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True (--overwrite) to replace it")
    if not episodes:
        raise ValueError("no episodes to write")
    attrs = dict(attrs or {})
    problem = dict(attrs.get("problem_info") or {})
    problem.setdefault("language_instruction", episodes[0].instruction)
    attrs["problem_info"] = problem
    attrs.setdefault("task", episodes[0].task)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial")
    with h5py.File(tmp, "w") as f:
        data = f.create_group("data")
        for i, ep in enumerate(episodes):
            ep.validate()
            g = data.create_group(f"demo_{i}")
            g.attrs["num_samples"] = ep.length
            g.create_dataset("actions", data=ep.actions.astype(np.float64))
            for key, arr in (("states", ep.states), ("rewards", ep.rewards), ("dones", ep.dones)):
                if arr is not None:
                    g.create_dataset(key, data=arr)
            if ep.states is not None:
                g.attrs["init_state"] = ep.states[0]
            obs = g.create_group("obs")
            for key, arr in ep.obs.items():
                image = arr.dtype == np.uint8 and arr.ndim == 4
                kw: dict[str, Any] = (
                    {"compression": "gzip", "compression_opts": 4} if image and compress_images else {}
                )
                obs.create_dataset(key, data=arr, **kw)
            if "robot_states" not in g and {"gripper_states", "ee_pos", "ee_ori"} <= set(ep.obs):
                # LIBERO's robot_states = [gripper qpos (2), eef pos (3), eef quat (4)]; we keep ee_ori
                # as axis-angle, matching what the policy reads.
                g.create_dataset(
                    "robot_states",
                    data=np.concatenate(
                        [ep.obs["gripper_states"], ep.obs["ee_pos"], ep.obs["ee_ori"]], axis=1
                    ),
                )
        data.attrs["num_demos"] = len(episodes)
        data.attrs["total"] = int(sum(ep.length for ep in episodes))
        for key, value in attrs.items():
            data.attrs[key] = json.dumps(value) if isinstance(value, (dict, list)) else value
    tmp.replace(path)
    return path


def _open(path: str | Path) -> h5py.File:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"rollout file not found: {path}")
    f = h5py.File(path, "r")
    if "data" not in f:
        f.close()
        raise RolloutFormatError(f"{path}: no top-level 'data' group (not a LIBERO/robomimic HDF5 file)")
    return f


def _sorted_demos(f: h5py.File, path: str | Path) -> list[str]:
    names = [k for k in f["data"].keys() if _DEMO.match(k)]
    if not names:
        raise RolloutFormatError(f"{path}: 'data' holds no demo_<i> groups")
    return sorted(names, key=lambda k: int(_DEMO.match(k).group(1)))  # type: ignore[union-attr]


def _opt(g: h5py.Group, key: str) -> np.ndarray | None:
    return np.asarray(g[key][()]) if key in g else None


def _decode_attrs(attrs: h5py.AttributeManager) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in attrs.items():
        if isinstance(value, bytes):
            value = value.decode()
        if isinstance(value, str) and value[:1] in "{[":
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                pass  # a plain string that happens to start with a bracket
        out[key] = value
    return out
