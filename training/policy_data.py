"""Glue between the reference policy and the energy trainer: windows in, features out.

- `PolicyWindows`: observation windows encoded once into the policy's tensors (PolicyInputs),
  expert chunks normalised with the policy's statistics; batches are gathered by item id.
  (The joint modes train the policy with `energy_rerank.training.bc.bc_loss`.)
- `policy_features`: a frozen forward (no grad, eval mode) -> FeatureBatch for the energy loss.
- `cache_policy_features`: run a frozen policy over windows once into a feature cache.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from energy_rerank.policy.windows import Windows
from energy_rerank.training.cache import FeatureBatch, write_feature_cache

if TYPE_CHECKING:  # the policy module imports transformers; energy-only training never needs it
    from energy_rerank.policy.reference import PolicyInputs, ReferenceVLA


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


def cache_policy_features(
    policy: ReferenceVLA,
    windows: Windows,
    out_dir: str | Path,
    batch_size: int = 64,
    shard_size: int = 4096,
    context_dtype: torch.dtype = torch.float16,
    meta: dict[str, Any] | None = None,
) -> Path:
    """Run the frozen policy over every window once and write a feature cache (stats in its meta)."""
    data = PolicyWindows(policy, windows)

    def batches() -> Iterator[FeatureBatch]:
        from tqdm import tqdm

        for start in tqdm(range(0, len(data), batch_size), desc="caching features", unit="batch", leave=False):
            idx = torch.arange(start, min(start + batch_size, len(data)))
            yield policy_features(policy, *data.gather(idx))

    info = {"policy": policy.config.name, "policy_hidden_size": policy.config.hidden_size, **(meta or {})}
    if policy.stats is not None:
        info["stats"] = policy.stats.to_dict()
    return write_feature_cache(batches(), out_dir, shard_size, context_dtype, meta=info)
