"""Feature cache: a frozen Proposer's outputs stored once, so energy-only training never runs it again.

Layout of a cache directory (no pickle: tensors in safetensors, metadata in JSON):

    cache.json                 format version, sample count, shapes, shard list, free-form meta
    shard_00000.safetensors    context [n, S, D], valid [n, S] bool, layer_actions [n, L, H, A],
    shard_00001.safetensors    base [n, H, A], expert [n, H, A]   (all actions normalised)

The directory is written under a temporary name and renamed into place when complete, so a
reader never sees half a cache. Shards are loaded whole and kept in a small LRU, which suits
the shard-local shuffling of `training.batching`.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from energy_rerank.policy.base import Observation, Proposer

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

    @staticmethod
    def cat(batches: Sequence[FeatureBatch]) -> FeatureBatch:
        if not batches:
            raise ValueError("nothing to concatenate")
        names = [f.name for f in fields(FeatureBatch)]
        return FeatureBatch(**{n: torch.cat([getattr(b, n) for b in batches]) for n in names})


class FeatureCacheWriter:
    """Appends FeatureBatches and writes full shards; `close()` publishes the directory."""

    def __init__(self, out_dir: str | Path, shard_size: int = 1024, context_dtype: torch.dtype = torch.float16):
        if shard_size < 1:
            raise ValueError(f"shard_size must be >= 1, got {shard_size}")
        self.out_dir = Path(out_dir)
        if self.out_dir.exists():
            raise FileExistsError(f"{self.out_dir} exists; refusing to overwrite a feature cache")
        self.out_dir.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.out_dir.name}.", dir=self.out_dir.parent))
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
        elif shapes != self.shapes:
            raise ValueError(f"batch shapes {shapes} differ from the cache's {self.shapes}")
        self.pending.append(batch.to("cpu", torch.float32))
        self.pending_len += len(batch)
        while self.pending_len >= self.shard_size:
            self._flush(self.shard_size)

    def _flush(self, n: int) -> None:
        allb = FeatureBatch.cat(self.pending)
        head, rest = allb.select(slice(0, n)), allb.select(slice(n, None))
        self.pending = [rest] if len(rest) else []
        self.pending_len = len(rest)
        name = f"shard_{len(self.shards):05d}.safetensors"
        tensors = {k: v.contiguous() for k, v in head.tensors().items()}
        tensors["context"] = tensors["context"].to(self.context_dtype)
        save_file(tensors, str(self.tmp / name))
        self.shards.append({"file": name, "count": len(head)})

    def close(self, meta: dict[str, Any] | None = None) -> Path:
        if self.pending_len:
            self._flush(self.pending_len)
        if not self.shards:
            shutil.rmtree(self.tmp, ignore_errors=True)
            raise ValueError("feature cache is empty: no samples were added")
        index = {
            "format": CACHE_FORMAT,
            "count": sum(s["count"] for s in self.shards),
            "shapes": self.shapes,
            "shards": self.shards,
            "meta": meta or {},
        }
        (self.tmp / INDEX_FILE).write_text(json.dumps(index, indent=2))
        os.replace(self.tmp, self.out_dir)
        return self.out_dir


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


@torch.no_grad()
def proposer_features(
    proposer: Proposer,
    samples: Iterable[tuple[Observation, torch.Tensor]],
    batch_size: int = 32,
    total: int | None = None,
) -> Iterator[FeatureBatch]:
    """Run a frozen Proposer over (observation, expert chunk [H, A] normalised) pairs, in batches."""
    obs: list[Observation] = []
    experts: list[torch.Tensor] = []

    def flush() -> FeatureBatch:
        p = proposer.propose(obs)
        expert = torch.stack([torch.as_tensor(e, dtype=torch.float32) for e in experts])  # [B, H, A]
        return FeatureBatch(
            context=p.context.detach().cpu().float(),
            valid=p.valid.detach().cpu(),
            layer_actions=p.layer_actions.detach().cpu().float(),
            base=p.base.detach().cpu().float(),
            expert=expert,
        )

    for o, e in tqdm(samples, total=total, desc="caching features", unit="sample", leave=False):
        obs.append(o)
        experts.append(e)
        if len(obs) == batch_size:
            yield flush()
            obs, experts = [], []
    if obs:
        yield flush()


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
