"""Glue between policies and the energy trainer: windows in, features out.

- `cache_policy_features`: run any frozen `Proposer` (a policy bundle `load_policy` loads) over
  windows once into a feature cache, in one process or sharded over torchrun ranks.
- `PolicyWindows` / `policy_features`: the joint training modes, which also train the reference
  policy: windows encoded once into its tensors (PolicyInputs), and a forward without grad
  -> FeatureBatch. (They train the policy with `energy_rerank.training.bc.bc_loss`.)
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from energy_rerank.policy.base import Proposer
from energy_rerank.policy.windows import Windows
from energy_rerank.training.cache import FeatureBatch, FeatureCacheWriter, publish_shards

if TYPE_CHECKING:  # the policy module imports transformers; energy-only training never needs it
    from energy_rerank.policy.reference import PolicyInputs, ReferenceVLA
    from energy_rerank.training.distributed import DistInfo


class PolicyWindows:
    """Windows pre-encoded for one policy (encoding is deterministic and weight-free)."""

    def __init__(self, policy: ReferenceVLA, windows: Windows) -> None:
        if windows.chunk_len != policy.config.chunk_len or windows.action_dim != policy.config.action_dim:
            raise ValueError(
                f"windows have chunks [H={windows.chunk_len}, A={windows.action_dim}], the policy expects "
                f"[H={policy.config.chunk_len}, A={policy.config.action_dim}]"
            )
        self.inputs = policy.encode(windows.observations)
        expert = torch.from_numpy(windows.chunks).float()  # [N, H, A] robot units
        self.expert = policy.stats.normalize_actions(expert) if policy.stats is not None else expert

    def __len__(self) -> int:
        return int(self.expert.shape[0])

    def gather(self, index: torch.Tensor) -> tuple[PolicyInputs, torch.Tensor]:
        """-> (inputs for B windows, expert chunks [B, H, A] normalised)."""
        return self.inputs.select(index), self.expert[index]

    def shard_ranges(self) -> list[tuple[int, int]]:
        return [(0, len(self))]


def policy_features(policy: ReferenceVLA, inputs: PolicyInputs, expert: torch.Tensor) -> FeatureBatch:
    """Context, mask and layer actions from the policy as it is now, without grad."""
    p = policy.propose_inputs(inputs)
    return FeatureBatch(
        context=p.context.float(),
        valid=p.valid,
        layer_actions=p.layer_actions.float(),
        base=p.base.float(),
        expert=expert.to(p.context.device).float(),
    )


@torch.no_grad()
def proposer_features(proposer: Proposer, windows: Windows, batch_size: int = 64) -> Iterator[FeatureBatch]:
    """Run a frozen Proposer over windows in order, `batch_size` observations per `propose` call;
    expert chunks are normalised with the proposer's statistics, as its candidates are."""
    d = proposer.description
    if windows.chunk_len != d.chunk_len or windows.action_dim != d.action_dim:
        raise ValueError(
            f"windows have chunks [H={windows.chunk_len}, A={windows.action_dim}], the policy {d.name!r} "
            f"proposes [H={d.chunk_len}, A={d.action_dim}]"
        )
    from tqdm import tqdm

    for start in tqdm(range(0, len(windows), batch_size), desc="caching features", unit="batch", leave=False):
        idx = range(start, min(start + batch_size, len(windows)))
        p = proposer.propose([windows.observations[i] for i in idx])
        expert = torch.from_numpy(windows.chunks[start : idx.stop]).float()  # [B, H, A] robot units
        if proposer.stats is not None:
            expert = proposer.stats.normalize_actions(expert)
        # A sampling policy's draws are cached where layer chunks go, last = draw 0 = base, so the
        # trainer's layer negatives and sampler candidates are its draws in the order served.
        alternatives = p.layer_actions if p.draws is None else torch.cat([p.layer_actions, p.draws.flip(1)], 1)
        yield FeatureBatch(
            context=p.context.detach().cpu().float(),
            valid=p.valid.detach().cpu(),
            layer_actions=alternatives.detach().cpu().float(),
            base=p.base.detach().cpu().float(),
            expert=expert,
        )


def cache_policy_features(
    proposer: Proposer,
    windows: Windows,
    out_dir: str | Path,
    batch_size: int = 64,
    shard_size: int = 4096,
    context_dtype: torch.dtype = torch.float16,
    meta: dict[str, Any] | None = None,
    info: DistInfo | None = None,
) -> Path:
    """Run the frozen proposer over every window once and write a feature cache (stats in its meta).

    Under torchrun (`info.world` > 1) each rank caches a contiguous share of the episodes into a
    shared staging directory and rank 0 indexes the shards in rank order: the cache holds the same
    samples, in the same order, as one process would write."""
    out_dir = Path(out_dir)
    d = proposer.description
    index = {"policy": d.name, "policy_hidden_size": d.hidden_size, **(meta or {})}
    if proposer.stats is not None:
        index["stats"] = proposer.stats.to_dict()
    rank, world = (info.rank, info.world) if info is not None else (0, 1)
    if world == 1:
        writer = FeatureCacheWriter(out_dir, shard_size, context_dtype)
        for batch in proposer_features(proposer, windows, batch_size):
            writer.add(batch)
        return writer.close(index)

    from energy_rerank.data import episode_share
    from energy_rerank.training.distributed import barrier

    assert info is not None
    staging = out_dir.with_name(f".{out_dir.name}.staging")
    if rank == 0:
        if out_dir.exists():
            raise FileExistsError(f"{out_dir} exists; refusing to overwrite a feature cache")
        shutil.rmtree(staging, ignore_errors=True)  # left by an interrupted run
        staging.mkdir(parents=True)
    barrier(info)
    mine = windows.subset(episode_share(windows.episode, rank, world))
    writer = FeatureCacheWriter(out_dir, shard_size, context_dtype, staging=staging, prefix=f"rank{rank:03d}_")
    for batch in proposer_features(proposer, mine, batch_size):
        writer.add(batch)
    part = writer.finish()
    (staging / f"rank{rank:03d}.json").write_text(json.dumps(part))
    barrier(info)
    if rank == 0:
        parts = [json.loads((staging / f"rank{r:03d}.json").read_text()) for r in range(world)]
        for r in range(world):
            (staging / f"rank{r:03d}.json").unlink()
        publish_shards(staging, out_dir, [p for p in parts if p["shards"]], {**index, "ranks": world})
    barrier(info)
    return out_dir
