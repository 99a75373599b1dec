"""Feature cache: a frozen Proposer's outputs stored once, so energy-only training never runs it again.

Layout of a cache directory (no pickle: tensors in safetensors, metadata in JSON):

    cache.json                 format version, sample count, shapes, shard list, free-form meta
    shard_00000.safetensors    context [n, S, D], valid [n, S] bool, layer_actions [n, L, H, A],
    shard_00001.safetensors    base [n, H, A], expert [n, H, A]   (all actions normalised)

The context length S may differ between shards (a transformers backbone pads prompts to a
batch's longest); samples read together are right-padded to the longest, padding invalid.

The directory is written under a temporary name and renamed into place when complete, so a
reader never sees half a cache. Shards are loaded whole and kept in a small LRU, which suits
the shard-local shuffling of `training.batching`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

CACHE_FORMAT = 1
INDEX_FILE = "cache.json"


@dataclass
class FeatureBatch:
    """What the energy loss needs for B samples; one cache record per sample."""

    context: torch.Tensor  # [B, S, D] policy last-layer hidden states
    valid: torch.Tensor  # [B, S] bool, True = attend
    layer_actions: torch.Tensor  # [B, L, H, A] one chunk per policy layer (last = base)
    base: torch.Tensor  # [B, H, A] the policy's own chunk
    expert: torch.Tensor  # [B, H, A] the demonstrated chunk (the positive)

    def __post_init__(self) -> None:
        b = self.context.shape[0]
        if self.context.dim() != 3:
            raise ValueError(f"context must be [B, S, D], got {tuple(self.context.shape)}")
        s = self.context.shape[1]
        if self.valid.shape != (b, s) or self.valid.dtype != torch.bool:
            raise ValueError(f"valid must be bool [{b}, {s}], got {self.valid.dtype} {tuple(self.valid.shape)}")
        if self.layer_actions.dim() != 4 or self.layer_actions.shape[0] != b:
            raise ValueError(f"layer_actions must be [{b}, L, H, A], got {tuple(self.layer_actions.shape)}")
        chunk = tuple(self.layer_actions.shape[2:])
        for name in ("base", "expert"):
            t = getattr(self, name)
            if tuple(t.shape) != (b, *chunk):
                raise ValueError(f"{name} must be [{b}, {chunk[0]}, {chunk[1]}], got {tuple(t.shape)}")

    def __len__(self) -> int:
        return int(self.context.shape[0])

    def tensors(self) -> dict[str, torch.Tensor]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def select(self, index: torch.Tensor | slice) -> FeatureBatch:
        return FeatureBatch(**{k: v[index] for k, v in self.tensors().items()})

    def to(self, device: torch.device | str, dtype: torch.dtype = torch.float32) -> FeatureBatch:
        """Move to `device`; float fields become `dtype` (valid stays bool)."""
        return FeatureBatch(
            **{k: v.to(device) if k == "valid" else v.to(device, dtype) for k, v in self.tensors().items()}
        )

    def padded(self, length: int) -> FeatureBatch:
        """Context and mask right-padded to `length` tokens (padding invalid: the head never reads it)."""
        pad = length - self.context.shape[1]
        if pad < 0:
            raise ValueError(f"cannot pad {self.context.shape[1]} context tokens to {length}")
        if pad == 0:
            return self
        return dataclasses.replace(
            self,
            context=torch.nn.functional.pad(self.context, (0, 0, 0, pad)),
            valid=torch.nn.functional.pad(self.valid, (0, pad), value=False),
        )

    @staticmethod
    def cat(batches: Sequence[FeatureBatch]) -> FeatureBatch:
        """Samples of several batches as one. Policies whose context length varies by batch (a
        transformers backbone pads prompts to the batch's longest) are padded to the longest."""
        if not batches:
            raise ValueError("nothing to concatenate")
        s = max(b.context.shape[1] for b in batches)
        batches = [b.padded(s) for b in batches]
        names = [f.name for f in fields(FeatureBatch)]
        return FeatureBatch(**{n: torch.cat([getattr(b, n) for b in batches]) for n in names})


class FeatureCacheWriter:
    """Appends FeatureBatches and writes full shards; `close()` publishes the directory.

    Under torchrun every rank writes its own shards (named by `prefix`) into one shared staging
    directory, and `publish_shards` on rank 0 then turns them into one cache, in rank order."""

    def __init__(
        self,
        out_dir: str | Path,
        shard_size: int = 1024,
        context_dtype: torch.dtype = torch.float16,
        staging: str | Path | None = None,  # shared staging directory (ranks); None = a fresh one
        prefix: str = "",  # shard file name prefix, unique per rank
    ):
        if shard_size < 1:
            raise ValueError(f"shard_size must be >= 1, got {shard_size}")
        self.out_dir = Path(out_dir)
        if self.out_dir.exists():
            raise FileExistsError(f"{self.out_dir} exists; refusing to overwrite a feature cache")
        self.out_dir.parent.mkdir(parents=True, exist_ok=True)
        if staging is None:
            staging = tempfile.mkdtemp(prefix=f".{self.out_dir.name}.", dir=self.out_dir.parent)
        self.tmp = Path(staging)
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.prefix = prefix
        self.shard_size = shard_size
        self.context_dtype = context_dtype  # fp16 halves the cache; the head computes in fp32
        self.pending: list[FeatureBatch] = []
        self.pending_len = 0
        self.shards: list[dict[str, Any]] = []
        self.shapes: dict[str, list[int]] | None = None

    def add(self, batch: FeatureBatch) -> None:
        shapes = {k: list(v.shape[1:]) for k, v in batch.tensors().items()}
        if self.shapes is None:
            self.shapes = shapes
        elif _without_length(shapes) != _without_length(self.shapes):
            raise ValueError(f"batch shapes {shapes} differ from the cache's {self.shapes}")
        else:  # the context length may vary by batch: the index records the longest
            longest = max(shapes["valid"][0], self.shapes["valid"][0])
            self.shapes["context"][0] = self.shapes["valid"][0] = longest
        self.pending.append(batch.to("cpu", torch.float32))
        self.pending_len += len(batch)
        while self.pending_len >= self.shard_size:
            self._flush(self.shard_size)

    def _flush(self, n: int) -> None:
        allb = FeatureBatch.cat(self.pending)
        head, rest = allb.select(slice(0, n)), allb.select(slice(n, None))
        self.pending = [rest] if len(rest) else []
        self.pending_len = len(rest)
        name = f"{self.prefix}shard_{len(self.shards):05d}.safetensors"
        tensors = {k: v.contiguous() for k, v in head.tensors().items()}
        tensors["context"] = tensors["context"].to(self.context_dtype)
        save_file(tensors, str(self.tmp / name))
        self.shards.append({"file": name, "count": len(head)})

    def finish(self) -> dict[str, Any]:
        """Write what is pending; -> this writer's part {"shards", "shapes"} (not yet a cache)."""
        if self.pending_len:
            self._flush(self.pending_len)
        return {"shards": self.shards, "shapes": self.shapes}

    def close(self, meta: dict[str, Any] | None = None) -> Path:
        return publish_shards(self.tmp, self.out_dir, [self.finish()], meta)


def _without_length(shapes: dict[str, list[int]]) -> dict[str, list[int]]:
    """Per-sample shapes less the context length S (context [S, D] -> [D], valid [S] -> [])."""
    return {**shapes, "context": shapes["context"][1:], "valid": []}


def publish_shards(
    staging: Path, out_dir: Path, parts: Sequence[dict[str, Any]], meta: dict[str, Any] | None = None
) -> Path:
    """Index the shards of `parts` (in order) and rename the staging directory into place."""
    shards = [s for part in parts for s in part["shards"]]
    shapes = [part["shapes"] for part in parts if part["shapes"] is not None]
    if not shards:
        shutil.rmtree(staging, ignore_errors=True)
        raise ValueError("feature cache is empty: no samples were added")
    if any(_without_length(s) != _without_length(shapes[0]) for s in shapes):
        shutil.rmtree(staging, ignore_errors=True)
        raise ValueError(f"the parts of the cache disagree on shapes: {shapes}")
    longest = max(s["valid"][0] for s in shapes)
    index = {
        "format": CACHE_FORMAT,
        "count": sum(s["count"] for s in shards),
        "shapes": {**shapes[0], "context": [longest, *shapes[0]["context"][1:]], "valid": [longest]},
        "shards": shards,
        "meta": meta or {},
    }
    (staging / INDEX_FILE).write_text(json.dumps(index, indent=2))
    os.replace(staging, out_dir)
    return out_dir


class FeatureCache:
    """Read side of a cache directory; shards are loaded on demand into a small LRU."""

    def __init__(self, directory: str | Path, max_shards_in_memory: int = 4) -> None:
        self.dir = Path(directory)
        path = self.dir / INDEX_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{self.dir}: not a feature cache (no {INDEX_FILE})")
        self.index = json.loads(path.read_text())
        if self.index.get("format") != CACHE_FORMAT:
            raise ValueError(f"{path}: cache format {self.index.get('format')}, expected {CACHE_FORMAT}")
        counts = [int(s["count"]) for s in self.index["shards"]]
        self.starts = torch.tensor([0, *counts]).cumsum(0)  # [num_shards + 1] first item of each shard
        self.max_shards = max_shards_in_memory
        self._lru: OrderedDict[int, FeatureBatch] = OrderedDict()

    def __len__(self) -> int:
        return int(self.index["count"])

    @property
    def meta(self) -> dict[str, Any]:
        return dict(self.index.get("meta", {}))

    @property
    def num_shards(self) -> int:
        return len(self.index["shards"])

    def shard_ranges(self) -> list[tuple[int, int]]:
        """[start, end) item range of each shard, in order."""
        s = self.starts.tolist()
        return [(s[i], s[i + 1]) for i in range(self.num_shards)]

    def shard(self, i: int) -> FeatureBatch:
        if i in self._lru:
            self._lru.move_to_end(i)
            return self._lru[i]
        tensors = load_file(str(self.dir / self.index["shards"][i]["file"]))
        batch = FeatureBatch(**tensors).to("cpu", torch.float32)
        self._lru[i] = batch
        while len(self._lru) > self.max_shards:
            self._lru.popitem(last=False)
        return batch

    def gather(self, indices: torch.Tensor | Sequence[int]) -> FeatureBatch:
        """Items at global `indices` (any order) -> FeatureBatch in that order."""
        idx = torch.as_tensor(indices, dtype=torch.long)
        if idx.numel() == 0 or int(idx.min()) < 0 or int(idx.max()) >= len(self):
            raise IndexError(f"cache indices must lie in [0, {len(self)}), got {idx.tolist()[:8]}...")
        shard_of = torch.searchsorted(self.starts, idx, right=True) - 1
        parts, order = [], []
        for sh in shard_of.unique().tolist():
            pos = (shard_of == sh).nonzero().squeeze(1)
            parts.append(self.shard(sh).select(idx[pos] - int(self.starts[sh])))
            order.append(pos)
        merged = FeatureBatch.cat(parts)
        return merged.select(torch.cat(order).argsort())

    def load_all(self) -> FeatureBatch:
        return FeatureBatch.cat([self.shard(i) for i in range(self.num_shards)])


def write_feature_cache(
    batches: Iterable[FeatureBatch],
    out_dir: str | Path,
    shard_size: int = 1024,
    context_dtype: torch.dtype = torch.float16,
    meta: dict[str, Any] | None = None,
) -> Path:
    writer = FeatureCacheWriter(out_dir, shard_size, context_dtype)
    for b in batches:
        writer.add(b)
    return writer.close(meta)


class InMemoryFeatures:
    """A FeatureBatch with the read interface of FeatureCache (synthetic features, small tests)."""

    def __init__(self, batch: FeatureBatch, meta: dict[str, Any] | None = None) -> None:
        self.batch = batch
        self.meta = dict(meta or {})

    def __len__(self) -> int:
        return len(self.batch)

    def shard_ranges(self) -> list[tuple[int, int]]:
        return [(0, len(self.batch))]

    def gather(self, indices: torch.Tensor | Sequence[int]) -> FeatureBatch:
        return self.batch.select(torch.as_tensor(indices, dtype=torch.long))
