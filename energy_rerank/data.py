"""`--data`: the one option that names where training and evaluation windows come from.

A data spec is one of
  PATH.hdf5                       LIBERO robomimic-style episodes (scripted demos, on-policy rollouts)
  PATH.parquet                    LeRobot parquet episodes (openpi's LIBERO conversion)
  DIR                             a LeRobot v3 dataset (meta/info.json, data/chunk-*/file-*.parquet),
                                  or else every .hdf5 / .parquet file directly inside DIR, sorted
  synthetic:episodes=200,seed=1   the built-in synthetic task (keys: episodes, seed, image_size)
and every command that reads data (`train-policy`, `cache-features`, `eval offline`) takes a list
of them. Every source reduces to `Windows` (observation at t, expert chunk a[t:t+H]) plus a task
label per window, so a policy's features are cached the same way whatever the source.

`demos` picks demo_i of every HDF5 file (e.g. held-out demonstrations); it does not apply to
parquet, LeRobot v3 or synthetic sources. Windows are ordered source by source, episode by episode, so a
contiguous share of episodes is a contiguous share of windows (`episode_share`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from energy_rerank.policy.windows import Windows

SYNTHETIC = "synthetic:"
SYNTHETIC_KEYS = {"episodes": 200, "seed": 1, "image_size": 0}  # key -> default
FILE_SUFFIXES = (".hdf5", ".h5", ".parquet")


class DataSpecError(ValueError):
    """A --data entry that names no readable source; the message quotes the entry."""


@dataclass
class Dataset:
    """Windows from one or more sources, with what a report needs to group them."""

    windows: Windows  # every window, source by source, episode by episode
    tasks: list[str]  # [N] task label of every window
    sources: list[str]  # the specs it was read from, as given


def parse_synthetic(spec: str) -> dict[str, int]:
    """'synthetic:episodes=20,seed=3' -> {'episodes': 20, 'seed': 3, 'image_size': 0}."""
    body = spec[len(SYNTHETIC):]
    out = dict(SYNTHETIC_KEYS)
    for part in filter(None, (p.strip() for p in body.split(","))):
        key, eq, value = part.partition("=")
        if not eq or key not in SYNTHETIC_KEYS:
            raise DataSpecError(f"--data {spec!r}: expected key=value with keys {sorted(SYNTHETIC_KEYS)}, got {part!r}")
        try:
            out[key] = int(value)
        except ValueError:
            raise DataSpecError(f"--data {spec!r}: {key} must be an integer, got {value!r}") from None
    if out["episodes"] < 1 or out["image_size"] < 0:
        raise DataSpecError(f"--data {spec!r}: episodes must be >= 1 and image_size >= 0")
    return out


def expand_paths(spec: str) -> list[str]:
    """A file spec -> [the file]; a directory -> its rollout files, sorted. Missing paths are errors."""
    from energy_rerank.rollouts.lerobot_v3 import is_lerobot_v3  # pyarrow: only when files are read

    p = Path(spec)
    if p.is_dir() and is_lerobot_v3(p):
        return [str(p)]  # one dataset, read whole (energy_rerank.rollouts.lerobot_v3)
    if p.is_dir():
        files = sorted(str(f) for f in p.iterdir() if f.suffix in FILE_SUFFIXES)
        if not files:
            raise DataSpecError(f"--data {spec!r}: directory holds no {'/'.join(FILE_SUFFIXES)} files")
        return files
    if not p.is_file():
        raise DataSpecError(f"--data {spec!r}: no such file or directory (nor a 'synthetic:...' spec)")
    if p.suffix not in FILE_SUFFIXES:
        raise DataSpecError(f"--data {spec!r}: unknown format {p.suffix!r}; expected {'/'.join(FILE_SUFFIXES)}")
    return [str(p)]


def load_data(
    specs: Sequence[str],
    chunk_len: int,
    demos: Sequence[int] | None = None,
    stride: int = 1,
    images: bool = False,
    failed_steps: int | None = None,
) -> Dataset:
    """Windows (chunks of `chunk_len` steps, every `stride`-th step) from every spec, in order;
    `failed_steps` keeps only the first K steps of failed on-policy rollouts (`episode_windows`)."""
    if not specs:
        raise DataSpecError("--data: give at least one source")
    parts: list[tuple[Windows, list[str]]] = []
    for spec in specs:
        if spec.startswith(SYNTHETIC):
            parts.append(_synthetic(spec, chunk_len, stride))
        else:
            from energy_rerank.rollouts.windows import load_windows

            parts.append(load_windows(expand_paths(spec), chunk_len, demos, stride, images, failed_steps))
    return Dataset(concat_windows([w for w, _ in parts]), [t for _, ts in parts for t in ts], list(specs))


def _synthetic(spec: str, chunk_len: int, stride: int) -> tuple[Windows, list[str]]:
    from energy_rerank.synthetic import SyntheticConfig, SyntheticTask

    k = parse_synthetic(spec)
    task = SyntheticTask(SyntheticConfig(chunk_len=chunk_len, image_size=k["image_size"]))
    episodes = task.episodes(k["episodes"], seed=k["seed"])
    windows = task.windows(episodes, stride=stride)
    return windows, [f"synthetic/{episodes[int(e)].target}" for e in windows.episode]


def concat_windows(parts: Sequence[Windows]) -> Windows:
    """Windows of several sources as one; episode indices are renumbered to stay distinct."""
    if len(parts) == 1:
        return parts[0]
    offsets = np.cumsum([0] + [int(w.episode.max()) + 1 for w in parts[:-1]])
    shapes = {(w.chunk_len, w.action_dim) for w in parts}
    if len(shapes) != 1:
        raise DataSpecError(f"--data sources disagree on the chunk shape [H, A]: {sorted(shapes)}")
    return Windows(
        observations=[o for w in parts for o in w.observations],
        chunks=np.concatenate([w.chunks for w in parts]),
        episode=np.concatenate([w.episode + off for w, off in zip(parts, offsets, strict=True)]),
        step=np.concatenate([w.step for w in parts]),
    )


def episode_share(episode: np.ndarray, rank: int, world: int) -> np.ndarray:
    """Window indices of rank's contiguous share of the episodes (episode [N], ordered as load_data
    orders them): ranks 0..world-1 in turn cover every window once, in the original order."""
    if not 0 <= rank < world:
        raise ValueError(f"rank must be in [0, {world}), got {rank}")
    ids = np.unique(episode)  # sorted
    bounds = np.linspace(0, len(ids), world + 1).round().astype(int)
    mine = ids[bounds[rank] : bounds[rank + 1]]
    return np.flatnonzero(np.isin(episode, mine))
