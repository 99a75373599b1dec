"""Deterministic batch order: a pure function of (seed, global step), so resume is exact.

An epoch visits the shards of a feature cache in a shuffled order and the items of each shard
in a shuffled order (one shard in memory at a time suffices). Under data parallelism the
global batch is `batch_size * world` consecutive items and rank r takes its r-th slice, so
the ranks never see the same item in a step.
"""

from __future__ import annotations

import torch


def split_holdout(n: int, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Item ids [0, n) -> (train ids, held-out ids), a seeded random split."""
    if not 0 <= fraction < 1:
        raise ValueError(f"holdout fraction must be in [0, 1), got {fraction}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    k = int(round(n * fraction))
    return perm[k:].sort().values, perm[:k].sort().values


class EpochBatches:
    """Batches of item ids for one rank; `batch(step)` depends only on (seed, step)."""

    def __init__(
        self,
        items: torch.Tensor,
        shard_ranges: list[tuple[int, int]],
        batch_size: int,
        seed: int,
        rank: int = 0,
        world: int = 1,
    ) -> None:
        self.items = items.long()  # [N] the ids this loader draws from (e.g. the training split)
        self.shard_of = torch.zeros_like(self.items)  # [N] shard of each item
        for i, (lo, hi) in enumerate(shard_ranges):
            self.shard_of[(self.items >= lo) & (self.items < hi)] = i
        self.num_shards = max(1, len(shard_ranges))
        self.batch_size, self.seed, self.rank, self.world = batch_size, seed, rank, world
        self.global_batch = batch_size * world
        self.per_epoch = len(self.items) // self.global_batch  # the ragged tail is dropped
        if self.per_epoch < 1:
            raise ValueError(
                f"{len(self.items)} items cannot fill one global batch of {batch_size} x {world} ranks"
            )
        self._epoch: int | None = None
        self._order = self.items

    def order(self, epoch: int) -> torch.Tensor:
        """Item ids of one epoch in visiting order: shuffled shards, shuffled items inside each."""
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        parts = []
        for sh in torch.randperm(self.num_shards, generator=g).tolist():
            mine = self.items[self.shard_of == sh]
            parts.append(mine[torch.randperm(len(mine), generator=g)])
        return torch.cat(parts)

    def batch(self, step: int) -> torch.Tensor:
        """This rank's item ids [batch_size] for global step `step` (0-based)."""
        epoch, pos = divmod(step, self.per_epoch)
        if self._epoch != epoch:
            self._epoch, self._order = epoch, self.order(epoch)
        start = pos * self.global_batch + self.rank * self.batch_size
        return self._order[start : start + self.batch_size]
