"""EnergyTrainer: the training loop of the energy head, in four modes.

- energy-only (default): features from a store (feature cache or synthetic) or from a frozen
  policy; only the energy head's parameters are trainable.
- joint: full phase separation (the seed's remedy 5). Each step: (1) L1 backward + step on the
  policy; (2) recompute context and layer actions with the *updated* policy under no_grad;
  (3) energy backward + step on detached features. The two optimisers never share a graph,
  so no energy gradient reaches the policy and no L1 gradient reaches the head.
- alternating: the same two phases, but `alternate_every` steps of one, then of the other.
- monitor-only: the energy loss is computed and logged; it trains nothing (the policy, if
  given, still trains with L1).

Every update goes through `GuardedOptimizer` (warm-up, clipping, skip-and-count). A batch
with a non-finite value is skipped before it reaches the model, on every rank at once.
Checkpoints carry weights, optimiser moments, RNG states and the step, and the batch order is
a pure function of (seed, step), so `fit(resume=True)` continues bit for bit.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from energy_rerank.candidates import CandidateSampler
from energy_rerank.config import config_from_dict, config_to_dict
from energy_rerank.energy import EnergyModel, NonFiniteError
from energy_rerank.normalize import NormStats
from energy_rerank.training.batching import EpochBatches, split_holdout
from energy_rerank.training.bc import bc_loss
from energy_rerank.training.cache import FeatureBatch, FeatureCache, InMemoryFeatures
from energy_rerank.training.checkpointing import (
    latest_checkpoint,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from energy_rerank.training.config import TrainConfig
from energy_rerank.training.distributed import DistInfo, barrier, replica_max_difference
from energy_rerank.training.losses import LossConfig, energy_loss
from energy_rerank.training.monitor import Monitor
from energy_rerank.training.optim import GuardedOptimizer, StepResult
from energy_rerank.training.policy_data import PolicyWindows, policy_features
from energy_rerank.training.synthetic_features import make_synthetic_features

if TYPE_CHECKING:  # the policy module imports transformers; energy-only training never needs it
    from energy_rerank.policy.reference import ReferenceVLA

CHECKPOINT_DIR = "checkpoints"
SUMMARY_FILE = "summary.json"


class FeatureStore(Protocol):
    """FeatureCache or InMemoryFeatures."""

    def __len__(self) -> int: ...
    def shard_ranges(self) -> list[tuple[int, int]]: ...
    def gather(self, indices: torch.Tensor) -> FeatureBatch: ...


class EnergyObjective(nn.Module):
    """The energy loss as a module: DistributedDataParallel syncs gradients only for work done
    inside a wrapped forward, so the loss (not just the head) is what DDP wraps."""

    def __init__(self, model: EnergyModel, loss: LossConfig, sampler: CandidateSampler | None = None) -> None:
        super().__init__()
        self.model = model
        self.loss = loss
        self.sampler = sampler

    def forward(
        self, batch: FeatureBatch, step: int, generator: torch.Generator
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        out = energy_loss(self.model, batch, self.loss, step, generator, self.sampler)
        return out.loss, out.metrics


def synthetic_store(config: TrainConfig) -> InMemoryFeatures:
    """The debug preset's data: synthetic features matching config.data.synthetic."""
    return InMemoryFeatures(
        make_synthetic_features(config.data.synthetic_samples, config.data.synthetic, seed=config.seed)
    )


class EnergyTrainer:
    def __init__(
        self,
        config: TrainConfig,
        out_dir: str | Path,
        features: FeatureStore | None = None,
        policy: ReferenceVLA | None = None,
        windows: PolicyWindows | None = None,
        info: DistInfo | None = None,
        stats: NormStats | None = None,
    ) -> None:
        c = self.config = config
        self.out = Path(out_dir)
        self.info = info or DistInfo(0, 1, 0, torch.device(c.device))
        self.device = self.info.device
        self.policy = policy
        self.windows = windows
        if c.mode in ("joint", "alternating") and (policy is None or windows is None):
            raise ValueError(f"mode {c.mode!r} trains the policy: pass policy= and windows=")
        if c.mode in ("joint", "alternating") and self.info.distributed:
            raise ValueError(f"mode {c.mode!r} runs in one process; torchrun supports energy-only and monitor-only")
        if c.mode in ("joint", "alternating") and features is not None:
            raise ValueError(f"mode {c.mode!r} recomputes features from the live policy; pass no feature store")
        if features is None and windows is None:
            features = synthetic_store(c)
        self.features = features
        self.stats = stats if stats is not None else (policy.stats if policy is not None else None)

        torch.manual_seed(c.seed)  # same init on every rank (DDP also broadcasts rank 0's weights)
        self.model = EnergyModel(c.energy).to(self.device)
        self.sampler = self._build_sampler() if c.loss.negatives.sampler_candidates else None
        self.objective: nn.Module = EnergyObjective(self.model, c.loss, self.sampler)
        self.trains_energy = c.mode != "monitor-only"
        self.trains_policy = c.mode in ("joint", "alternating") or (c.mode == "monitor-only" and windows is not None)
        self.model.requires_grad_(self.trains_energy)
        if policy is not None:
            policy.to(self.device)
            policy.requires_grad_(self.trains_policy)  # energy-only: the policy is frozen
        if self.info.distributed and self.trains_energy:
            self.objective = nn.parallel.DistributedDataParallel(self.objective)
        self.energy_opt = GuardedOptimizer(self.model.parameters(), c.optim) if self.trains_energy else None
        self.policy_opt = (
            GuardedOptimizer(policy.parameters(), c.policy_optim) if self.trains_policy and policy else None
        )
        # Negatives and dropout are reseeded from (seed, rank, step) at every step: the random
        # stream of a step never depends on history, so resume is exact on any number of ranks.
        self.neg_gen = torch.Generator(device=self.device)

        source_len = len(features) if features is not None else len(windows)  # type: ignore[arg-type]
        train_ids, held_ids = split_holdout(source_len, c.data.holdout_fraction, c.seed)
        self.held_ids = held_ids[: c.data.holdout_max]
        ranges = features.shard_ranges() if features is not None else windows.shard_ranges()  # type: ignore[union-attr]
        self.batches = EpochBatches(train_ids, ranges, c.data.batch_size, c.seed, self.info.rank, self.info.world)
        self.monitor = Monitor(self.out / "tb", enabled=self.info.is_main, tensorboard=c.tensorboard)
        self.step = 0
        self.heldout_history: list[dict[str, float]] = []

    def _build_sampler(self) -> CandidateSampler:
        """The inference candidate sampler, bounded by the action statistics ([-1, 1] without)."""
        a = self.config.energy.action_offset + self.config.energy.action_dim
        if self.stats is not None:
            low, high = self.stats.action_bounds(normalized=True)
        else:
            low, high = -torch.ones(a), torch.ones(a)
        return CandidateSampler(self.config.sampler, low, high)

    # ------------------------------------------------------------------ parameter sets
    def trainable_parameters(self) -> list[nn.Parameter]:
        mods: list[nn.Module] = [self.model] + ([self.policy] if self.policy is not None else [])
        return [p for m in mods for p in m.parameters() if p.requires_grad]

    # ------------------------------------------------------------------ data
    def _policy_batch(self, ids: torch.Tensor) -> tuple[Any, torch.Tensor]:
        assert self.windows is not None
        inputs, expert = self.windows.gather(ids)
        return inputs.to(self.device), expert.to(self.device)

    def _features(self, ids: torch.Tensor) -> FeatureBatch:
        """Features for item ids: from the store, or from the policy as it is now (no grad)."""
        if self.features is not None:
            return self.features.gather(ids).to(self.device)
        assert self.policy is not None
        return policy_features(self.policy, *self._policy_batch(ids))

    # ------------------------------------------------------------------ phases
    def energy_step(self, batch: FeatureBatch, step: int) -> dict[str, float]:
        """One guarded update of the energy head on (detached) features."""
        assert self.energy_opt is not None
        self.model.train()
        if not _finite_everywhere(batch, self.info):
            return _step_metrics(self.energy_opt.skip("non-finite values in the batch"), {})
        try:
            loss, metrics = self.objective(batch, step, self.neg_gen)
        except NonFiniteError as e:
            if self.info.distributed:
                raise  # the other ranks are already inside the gradient all-reduce
            return _step_metrics(self.energy_opt.skip(f"non-finite intermediate: {e}"), {})
        return _step_metrics(self.energy_opt.step(loss), metrics)

    def policy_step(self, ids: torch.Tensor) -> dict[str, float]:
        """Phase 1: one guarded L1 update of the policy; the energy head is not in this graph."""
        assert self.policy is not None and self.policy_opt is not None
        self.policy.train()
        inputs, expert = self._policy_batch(ids)
        loss, _ = bc_loss(self.policy, inputs, expert)
        r = self.policy_opt.step(loss)
        return {"l1": r.loss, "policy_grad_norm": r.grad_norm, "policy_skipped": float(not r.applied)}

    @torch.no_grad()
    def energy_metrics(self, batch: FeatureBatch, step: int, generator: torch.Generator) -> dict[str, float]:
        """The energy loss and its metrics without any update (eval mode: no dropout)."""
        self.model.eval()
        out = energy_loss(self.model, batch, self.config.loss, step, generator, self.sampler)
        return {k: float(v) for k, v in out.metrics.items()}

    def train_step(self, step: int) -> dict[str, float]:
        c = self.config
        seed = _step_seed(c.seed, self.info.rank, step)
        self.neg_gen.manual_seed(seed)
        torch.manual_seed(seed)
        ids = self.batches.batch(step)
        energy_on = step >= c.energy_warmup_steps
        if c.mode == "energy-only":
            return self.energy_step(self._features(ids), step)
        if c.mode == "joint":
            m = self.policy_step(ids)  # phase 1: L1 on the policy
            feats = self._features(ids)  # phase 2: features of the updated policy, no grad
            if energy_on:
                return {**m, **self.energy_step(feats, step)}  # phase 3: energy on detached features
            return m
        if c.mode == "alternating":
            if not energy_on or (step // c.alternate_every) % 2 == 0:
                return self.policy_step(ids)
            return self.energy_step(self._features(ids), step)
        # monitor-only
        m = self.policy_step(ids) if self.trains_policy else {}
        return {**m, **self.energy_metrics(self._features(ids), step, self.neg_gen)}

    # ------------------------------------------------------------------ evaluation
    def evaluate(self) -> dict[str, float]:
        """Held-out metrics in batches of batch_size, with fixed negatives (comparable over time)."""
        ids = self.held_ids
        bs = self.config.data.batch_size
        if len(ids) < 2:
            return {}
        gen = torch.Generator(device=self.device).manual_seed(12345)
        sums: dict[str, float] = {}
        n = 0
        for start in range(0, len(ids) - 1, bs):
            chunk = ids[start : start + bs]
            if len(chunk) < 2:
                break
            m = self.energy_metrics(self._features(chunk), self.step, gen)
            for k, v in m.items():
                sums[k] = sums.get(k, 0.0) + v * len(chunk)
            n += len(chunk)
        return {k: v / n for k, v in sums.items()}

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "energy": self.model.state_dict(),
            "rng": rng_state(),
            "config": config_to_dict(self.config),
        }
        if self.energy_opt is not None:
            state["energy_optim"] = self.energy_opt.state_dict()
        if self.policy is not None and self.trains_policy:
            state["policy"] = self.policy.state_dict()
            assert self.policy_opt is not None
            state["policy_optim"] = self.policy_opt.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = config_from_dict(TrainConfig, state["config"])
        if saved.energy != self.config.energy or saved.mode != self.config.mode:
            raise ValueError("checkpoint was written by a run with a different energy config or mode")
        self.model.load_state_dict(state["energy"])
        if self.energy_opt is not None:
            self.energy_opt.load_state_dict(state["energy_optim"])
        if "policy" in state and self.policy is not None:
            self.policy.load_state_dict(state["policy"])
            assert self.policy_opt is not None
            self.policy_opt.load_state_dict(state["policy_optim"])
        set_rng_state(state["rng"])

    def save(self, step: int) -> None:
        if self.info.is_main:
            save_checkpoint(self.out / CHECKPOINT_DIR, step, self.state_dict(), keep=self.config.keep_checkpoints)
        barrier(self.info)

    def resume(self) -> int:
        """Load the latest checkpoint under <out>/checkpoints if any; returns the step to start at."""
        path = latest_checkpoint(self.out / CHECKPOINT_DIR)
        if path is None:
            return 0
        step, state = load_checkpoint(path)
        self.load_state_dict(state)
        return step

    # ------------------------------------------------------------------ the loop
    def fit(self, resume: bool = False, stop_after: int | None = None) -> dict[str, Any]:
        """Train to config.steps (or stop after `stop_after` steps, with a checkpoint)."""
        c = self.config
        self.step = self.resume() if resume else 0
        end = c.steps if stop_after is None else min(c.steps, stop_after)
        bar = tqdm(range(self.step, end), desc=f"train {c.mode}", unit="step", disable=not self.info.is_main)
        for step in bar:
            metrics = self.train_step(step)
            self.monitor.accumulate(metrics)
            self.step = done = step + 1
            skipped = self.energy_opt.skipped_steps if self.energy_opt is not None else 0
            if done % c.log_every == 0:
                line = self.monitor.flush(done, skipped)
                bar.set_postfix(loss=f"{line.get('loss', math.nan):.3g}", skipped=skipped)
            if done % c.eval_every == 0 or done == c.steps:
                held = self.evaluate()
                if held:
                    self.heldout_history.append({"step": float(done), **held})
                    self.monitor.write(done, held, "heldout")
            if (c.checkpoint_every and done % c.checkpoint_every == 0) or done == end:
                self.save(done)
        summary = self.summary()
        if self.step >= c.steps:
            self.finish(summary)
        self.monitor.close()
        return summary

    def summary(self) -> dict[str, Any]:
        return {
            "mode": self.config.mode,
            "steps": self.step,
            "world_size": self.info.world,
            "applied_steps": self.energy_opt.applied_steps if self.energy_opt else 0,
            "skipped_steps": self.energy_opt.skipped_steps if self.energy_opt else 0,
            "replicas_max_abs_diff": replica_max_difference(self.model, self.info),
            "heldout": self.heldout_history[-1] if self.heldout_history else {},
            "history": self.monitor.history,
        }

    def finish(self, summary: dict[str, Any]) -> None:
        """Rank 0 writes the bundle the server loads, the config and the summary."""
        if self.info.is_main:
            self.model.eval()
            # The sampler goes with the head: it ranks well only the kind of candidates it trained on.
            extra = {"sampler": config_to_dict(self.config.sampler)}
            self.model.save_pretrained(self.out, stats=self.stats, extra=extra)  # the run directory is the bundle
            (self.out / "train_config.json").write_text(json.dumps(config_to_dict(self.config), indent=2))
            (self.out / SUMMARY_FILE).write_text(json.dumps(summary, indent=2, default=float))
        barrier(self.info)


def _finite_everywhere(batch: FeatureBatch, info: DistInfo) -> bool:
    """True when every float field is finite on every rank (so all ranks skip together)."""
    ok = all(bool(torch.isfinite(t).all()) for k, t in batch.tensors().items() if k != "valid")
    if not info.distributed:
        return ok
    flag = torch.tensor([1.0 if ok else 0.0], device=info.device)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item() > 0.5)


def _step_seed(seed: int, rank: int, step: int) -> int:
    return (seed * 1_000_003 + rank * 7_919 + step * 104_729) % (2**63 - 1)


def _step_metrics(result: StepResult, metrics: dict[str, torch.Tensor]) -> dict[str, float]:
    out = {k: float(v) for k, v in metrics.items()}
    out.update(grad_norm=result.grad_norm, lr=result.lr, skip_rate=float(not result.applied))
    return out


def load_store(config: TrainConfig) -> tuple[FeatureStore, NormStats | None]:
    """The feature store a config names (cache directory or synthetic) and its action stats."""
    if not config.data.cache_dir:
        return synthetic_store(config), None
    cache = FeatureCache(config.data.cache_dir)
    stats = cache.meta.get("stats")
    return cache, NormStats.from_dict(stats) if stats else None
