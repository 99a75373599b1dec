"""Train-state checkpoints without pickle, written atomically, for exact resume.

A train state is any nest of dicts, lists, tuples, numbers, strings and tensors (model and
optimiser state dicts, RNG states, counters). It is split into

    step_00000100/tensors.safetensors   every tensor, under its path in the nest
    step_00000100/state.json            the nest with tensors replaced by references

written into a temporary directory and renamed into place, then `latest` (a one-line text
file, itself replaced atomically) is pointed at it. A crash mid-write leaves the previous
checkpoint intact and `latest` pointing at it. Dict keys keep their type (optimiser state is
keyed by int), tuples stay tuples, so `load_state_dict` gets back exactly what it gave.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

STATE_FILE = "state.json"
TENSORS_FILE = "tensors.safetensors"
LATEST_FILE = "latest"
FORMAT = 1


def _flatten(obj: Any, path: str, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, torch.Tensor):
        tensors[path] = obj.detach().cpu().contiguous().clone()  # safetensors refuses shared storage
        return {"__tensor__": path}
    if isinstance(obj, dict):
        return {"__dict__": [[k, _flatten(v, f"{path}.{k}", tensors)] for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {"__tuple__": [_flatten(v, f"{path}.{i}", tensors) for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_flatten(v, f"{path}.{i}", tensors) for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"checkpoint state at {path!r}: cannot store {type(obj).__name__} without pickle")


def _unflatten(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        if "__dict__" in obj:
            return {k: _unflatten(v, tensors) for k, v in obj["__dict__"]}
        if "__tuple__" in obj:
            return tuple(_unflatten(v, tensors) for v in obj["__tuple__"])
        raise ValueError(f"corrupt checkpoint node {sorted(obj)}")
    if isinstance(obj, list):
        return [_unflatten(v, tensors) for v in obj]
    return obj


def _write_text_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def save_checkpoint(directory: str | Path, step: int, state: dict[str, Any], keep: int = 3) -> Path:
    """Write `state` as checkpoint `step` under `directory`; keep the newest `keep` checkpoints."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / f"step_{step:08d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=directory))
    try:
        tensors: dict[str, torch.Tensor] = {}
        nest = _flatten(state, "state", tensors)
        save_file(tensors, str(tmp / TENSORS_FILE))
        (tmp / STATE_FILE).write_text(json.dumps({"format": FORMAT, "step": step, "state": nest}))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    _write_text_atomic(directory / LATEST_FILE, final.name + "\n")
    old = sorted(p for p in directory.glob("step_*") if p.is_dir())
    for p in old[:-keep] if keep > 0 else []:
        shutil.rmtree(p, ignore_errors=True)
    return final


def latest_checkpoint(directory: str | Path) -> Path | None:
    """The checkpoint `latest` points at, or None when there is none."""
    pointer = Path(directory) / LATEST_FILE
    if not pointer.is_file():
        return None
    path = Path(directory) / pointer.read_text().strip()
    return path if (path / STATE_FILE).is_file() else None


def load_checkpoint(path: str | Path) -> tuple[int, dict[str, Any]]:
    """A checkpoint directory -> (step, state) exactly as saved."""
    path = Path(path)
    meta = json.loads((path / STATE_FILE).read_text())
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path}: checkpoint format {meta.get('format')}, expected {FORMAT}")
    tensors = load_file(str(path / TENSORS_FILE))
    return int(meta["step"]), _unflatten(meta["state"], tensors)


def rng_state() -> dict[str, Any]:
    """Global torch RNG state (CPU and every CUDA device): dropout and init draw from it."""
    state: dict[str, Any] = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = list(torch.cuda.get_rng_state_all())
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
