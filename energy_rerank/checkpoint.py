"""Bundle directories: config.json + model.safetensors (+ stats.json). No pickle, ever.

An energy bundle records the candidate sampler its head was trained to rank (config.json "extra":
"sampler"); `serve` and `eval offline` build candidates that way unless told otherwise. It may
also carry selection.json, the switch margin `energy-rerank eval offline --write-margin`
calibrated for it and the held-out switch rates measured with it; the server uses them unless
told otherwise. `read_head_record` is the one reader of both. Saving a bundle anew drops
selection.json: new weights need a new calibration.

A bundle is written into a temporary sibling directory and renamed into place, so a reader
never sees half a bundle; other files in the directory (a training run's checkpoints, logs and
summary) are kept. Loading checks every weight against the architecture the config
describes and names each mismatch.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from energy_rerank.candidates import SamplerConfig
from energy_rerank.config import config_from_dict, config_to_dict
from energy_rerank.normalize import STATS_FILE, NormStats

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT_VERSION = 1
SELECTION_FILE = "selection.json"  # an energy bundle's calibrated switch margin
BUNDLE_FILES = (CONFIG_FILE, WEIGHTS_FILE, STATS_FILE, SELECTION_FILE)  # what a bundle directory owns

M = TypeVar("M", bound=nn.Module)


class BundleError(ValueError):
    """A bundle is missing, of the wrong kind, or its weights disagree with its config."""


def save_bundle(
    path: str | Path,
    kind: str,
    config: Any,
    module: nn.Module,
    stats: NormStats | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write `module` as a bundle of the given kind at `path` (replaced atomically)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        meta = {"kind": kind, "format_version": FORMAT_VERSION, "config": config_to_dict(config)}
        if extra:
            meta["extra"] = extra
        (tmp / CONFIG_FILE).write_text(json.dumps(meta, indent=2))
        tensors = {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}
        save_file(tensors, str(tmp / WEIGHTS_FILE), metadata={"kind": kind})
        if stats is not None:
            stats.save(tmp)
        if path.exists():
            # Entries the bundle does not own (a training run's checkpoints, logs and summary live
            # beside the head it writes) move into the new directory; selection.json does not:
            # new weights need a new calibration.
            for entry in path.iterdir():
                if entry.name not in BUNDLE_FILES and not (tmp / entry.name).exists():
                    os.replace(entry, tmp / entry.name)
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def read_bundle_meta(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    cfg = path / CONFIG_FILE
    if not cfg.is_file():
        raise BundleError(f"{path}: not a bundle (no {CONFIG_FILE})")
    meta = json.loads(cfg.read_text())
    if meta.get("format_version") != FORMAT_VERSION:
        raise BundleError(f"{path}: format_version {meta.get('format_version')}, expected {FORMAT_VERSION}")
    return meta


def write_switch_margin(path: str | Path, margin: float, calibration: dict[str, Any]) -> Path:
    """Record a head's calibrated switch margin (inf = never switch) in its bundle, atomically."""
    if not margin >= 0:
        raise ValueError(f"switch margin must be >= 0, got {margin}")
    path = Path(path)
    read_bundle_meta(path)  # a bundle, not any directory
    data = {"switch_margin": margin if math.isfinite(margin) else "inf", "calibration": calibration}
    tmp = path / f".{SELECTION_FILE}.tmp"
    tmp.write_text(json.dumps(data, indent=2, allow_nan=False))  # strict JSON: inf is spelled "inf"
    os.replace(tmp, path / SELECTION_FILE)
    return path / SELECTION_FILE


def read_selection(path: str | Path) -> dict[str, Any] | None:
    """A bundle's selection record (switch_margin, calibration), or None when it has none."""
    f = Path(path) / SELECTION_FILE
    if not f.is_file():
        return None
    try:
        record = json.loads(f.read_text())
    except ValueError as e:
        raise BundleError(f"{f}: not JSON ({e})") from e
    if not isinstance(record, dict):
        raise BundleError(f"{f}: expected an object, got {type(record).__name__}")
    return record


def switch_margin_of(record: dict[str, Any], where: str | Path) -> float:
    """The switch margin of a selection record (`where` names it in errors)."""
    try:
        margin = float(record["switch_margin"])
    except (KeyError, TypeError, ValueError) as e:
        raise BundleError(f"{where}: no readable switch_margin ({e})") from e
    if not margin >= 0:
        raise BundleError(f"{where}: switch_margin must be >= 0, got {margin}")
    return margin


SWITCHED = "switched@"  # selection.json calibration.held_out keys: switched@N -> held-out switch rate at N


@dataclass(frozen=True)
class SwitchExpectation:
    """Held-out switch rates of one head at its calibrated margin, as `eval offline --write-margin`
    recorded them: what the server's switch-rate watch and a closed-loop report compare the live
    rate with."""

    margin: float  # the calibrated switch margin these rates were measured with
    ns: tuple[int, ...]  # N values measured, ascending
    rates: tuple[float, ...]  # switch rate at each of ns, in [0, 1]

    def at(self, n: int) -> float:
        """Expected rate at N: linear in log N between measured N, the nearest measured rate outside."""
        return float(np.interp(math.log(n), [math.log(k) for k in self.ns], self.rates))

    @classmethod
    def from_selection(
        cls, record: dict[str, Any], margin: float, where: str = SELECTION_FILE
    ) -> SwitchExpectation | None:
        """From a bundle's selection record and its margin; None when it holds no held-out switch rates."""
        held = (record.get("calibration") or {}).get("held_out") or {}
        pairs = []
        for key, value in held.items():
            if not key.startswith(SWITCHED):
                continue
            try:
                n, rate = int(key[len(SWITCHED):]), float(value)
            except (TypeError, ValueError) as e:
                raise BundleError(f"{where}: calibration.held_out[{key!r}] = {value!r}: {e}") from e
            if n < 1 or not 0.0 <= rate <= 1.0:
                raise BundleError(f"{where}: calibration.held_out[{key!r}] = {value!r} is not a rate at N >= 1")
            pairs.append((n, rate))
        if not pairs:
            return None
        pairs.sort()
        return cls(margin, tuple(n for n, _ in pairs), tuple(r for _, r in pairs))


@dataclass(frozen=True)
class HeadRecord:
    """How an energy head is meant to be served, as its bundle records it; read once per load."""

    sampler: SamplerConfig  # the candidates it was trained to rank (SamplerConfig() when unrecorded)
    switch_margin: float | None  # the calibrated margin of selection.json; None = never calibrated
    switch_rates: SwitchExpectation | None  # held-out switch rates at that margin; None = unrecorded

    def with_sampler(
        self,
        sigmas: tuple[float, ...] | None = None,
        gripper_mode: str | None = None,
        layers: tuple[int, ...] | None = None,
    ) -> SamplerConfig:
        """The recorded sampler with the fields given here (a server's or evaluation's flags) overriding
        it; None keeps the record's (layers=() is an override: no layer chunks)."""
        changes: dict[str, Any] = {"sigmas": sigmas, "gripper_mode": gripper_mode, "layers": layers}
        return dataclasses.replace(self.sampler, **{k: v for k, v in changes.items() if v is not None})


def read_head_record(path: str | Path) -> HeadRecord:
    """An energy bundle's sampler record (config.json extra.sampler) and selection.json, checked."""
    path = Path(path)
    recorded = read_bundle_meta(path).get("extra", {}).get("sampler")
    try:
        sampler = SamplerConfig() if recorded is None else config_from_dict(SamplerConfig, recorded)
    except (TypeError, ValueError) as e:
        raise BundleError(f"{path}/{CONFIG_FILE}: extra.sampler: {e}") from e
    record = read_selection(path)
    if record is None:
        return HeadRecord(sampler, None, None)
    where = str(path / SELECTION_FILE)
    margin = switch_margin_of(record, where)
    return HeadRecord(sampler, margin, SwitchExpectation.from_selection(record, margin, where))


def load_bundle(
    path: str | Path,
    kind: str,
    config_cls: type,
    build: Callable[[Any], M],
    map_location: str | torch.device = "cpu",
) -> tuple[M, NormStats | None]:
    """Read a bundle, build the module from its config, load and verify its weights."""
    module, _, stats = load_bundle_with_config(path, kind, config_cls, build, map_location)
    return module, stats


def load_bundle_with_config(
    path: str | Path,
    kind: str,
    config_cls: type,
    build: Callable[[Any], M],
    map_location: str | torch.device = "cpu",
) -> tuple[M, Any, NormStats | None]:
    """`load_bundle`, also returning the bundle's config (policies that load more from it)."""
    path = Path(path)
    meta = read_bundle_meta(path)
    if meta.get("kind") != kind:
        raise BundleError(f"{path}: bundle kind is {meta.get('kind')!r}, expected {kind!r}")
    try:
        config: Any = config_from_dict(config_cls, meta["config"])
    except (TypeError, ValueError) as e:
        raise BundleError(f"{path}/{CONFIG_FILE}: {e}") from e
    module = build(config)
    weights_path = path / WEIGHTS_FILE
    if not weights_path.is_file():
        raise BundleError(f"{path}: missing {WEIGHTS_FILE}")
    weights = load_file(str(weights_path), device=str(map_location))
    check_weights(module, weights, where=str(path))
    module.load_state_dict(weights, strict=True)
    module.to(map_location)
    module.eval()
    stats = NormStats.load(path) if (path / STATS_FILE).is_file() else None
    return module, config, stats


def check_weights(module: nn.Module, weights: dict[str, torch.Tensor], where: str) -> None:
    """Raise BundleError naming every missing, unexpected or mis-shaped weight."""
    expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    problems: list[str] = []
    for k in sorted(set(expected) - set(weights)):
        problems.append(f"missing weight {k} {expected[k]}")
    for k in sorted(set(weights) - set(expected)):
        problems.append(f"unexpected weight {k} {tuple(weights[k].shape)}")
    for k in sorted(set(expected) & set(weights)):
        if tuple(weights[k].shape) != expected[k]:
            problems.append(
                f"{k}: config implies shape {expected[k]}, weights have {tuple(weights[k].shape)}"
            )
    if problems:
        shown = "; ".join(problems[:8]) + (f"; ... {len(problems) - 8} more" if len(problems) > 8 else "")
        raise BundleError(f"{where}: config and weights disagree: {shown}")
