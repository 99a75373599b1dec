"""Behaviour cloning of the reference policy: L1 to the expert chunk, in normalised units.

Loss = L1(last layer's chunk) + layer_loss_weight * mean over earlier layers of their L1.
The default (weight 0) is the plain OpenVLA-OFT objective: only the last layer is supervised,
and earlier layers' chunks (the shared head applied to their hidden states) come out worse the
earlier the layer, which is what makes them hard negatives and varied candidates. A positive
weight is deep supervision: every layer's chunk moves toward the data (closer candidates,
smaller gaps between layers).

Steps go through the shared GuardedOptimizer (AdamW, warm-up, clipping, skip-and-count).
Held-out L1 per layer is measured before training and every `eval_every` steps; everything is
logged to TensorBoard when a log dir is given, and the result is a bundle the server loads.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from energy_rerank.policy.reference import PolicyInputs, ReferenceVLA
from energy_rerank.policy.windows import Windows
from energy_rerank.training.optim import GuardedOptimizer, OptimConfig


@dataclass(frozen=True)
class BCConfig:
    """Behaviour-cloning hyper-parameters (defaults train the tiny policy in about a minute)."""

    steps: int = 1500  # optimiser steps
    batch_size: int = 64  # windows per step
    lr: float = 2e-3  # peak learning rate (cosine decay to 10% after warm-up)
    weight_decay: float = 1e-4  # AdamW weight decay (matrices only)
    warmup_steps: int = 50  # linear LR warm-up
    clip_grad_norm: float = 1.0  # global grad-norm clip
    skip_grad_norm: float = 100.0  # skip a step above this grad norm (L1 grads run larger than energy grads)
    layer_loss_weight: float = 0.0  # deep-supervision weight of earlier layers' L1 (0 = last layer only)
    eval_every: int = 250  # steps between held-out evaluations (and the TensorBoard val scalars)
    eval_batch_size: int = 512  # windows per evaluation forward pass
    seed: int = 0  # batch order

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "eval_every", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.layer_loss_weight < 0:
            raise ValueError(f"layer_loss_weight must be >= 0, got {self.layer_loss_weight}")


@dataclass
class BCResult:
    """What a run did; L1 values are mean absolute errors per action dim, normalised units."""

    initial_val_l1: list[float]  # [L] held-out L1 of every layer's chunk before training
    final_val_l1: list[float]  # [L] after training (last entry = the policy's own chunk)
    history: list[dict[str, float]] = field(default_factory=list)  # one record per evaluation
    skipped_steps: int = 0  # steps refused by the optimiser guards
    seconds: float = 0.0  # wall-clock training time
    bundle: str | None = None  # where the policy was saved, if it was


def fit_stats(policy: ReferenceVLA, windows: Windows) -> None:
    """Give the policy action/state statistics from training windows (if it has none yet)."""
    if policy.stats is None:
        c = policy.config
        policy.stats = windows.norm_stats(c.lowdim_dim > 0, c.state_dim > 0, binary_dims=c.gripper_dims)
        policy._check_stats()


def targets_of(policy: ReferenceVLA, windows: Windows) -> torch.Tensor:
    """Expert chunks in the policy's normalised units: [N, H, A]."""
    chunks = torch.from_numpy(windows.chunks).float()
    return chunks if policy.stats is None else policy.stats.normalize_actions(chunks)


def bc_loss(
    policy: ReferenceVLA, inputs: PolicyInputs, expert: torch.Tensor, layer_loss_weight: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """The BC objective on one batch -> (scalar loss, per-layer L1 [L], detached).

    expert [B, H, A] normalised. Loss = L1 of the last layer's chunk + layer_loss_weight x
    the mean L1 of the earlier layers' chunks (deep supervision; 0 = plain OpenVLA-OFT)."""
    _, _, action_hidden = policy(inputs)  # [B, L, H, D]
    per_layer = (
        (policy.head(action_hidden) - expert.to(action_hidden.device)[:, None]).abs().mean(dim=(0, 2, 3))
    )
    loss = per_layer[-1]
    if layer_loss_weight > 0 and per_layer.numel() > 1:
        loss = loss + layer_loss_weight * per_layer[:-1].mean()
    return loss, per_layer.detach()


def evaluate_l1(
    policy: ReferenceVLA, inputs: PolicyInputs, targets: torch.Tensor, batch_size: int = 512
) -> torch.Tensor:
    """Held-out L1 of every layer's chunk: [L] (inputs from policy.encode, targets [N, H, A])."""
    total = torch.zeros(policy.config.num_layers, dtype=torch.float64)
    for start in range(0, inputs.batch, batch_size):
        sl = slice(start, start + batch_size)
        layer_actions = policy.propose_inputs(inputs.select(sl)).layer_actions.cpu()  # [b, L, H, A]
        err = (layer_actions - targets[sl, None]).abs().mean(dim=(2, 3))  # [b, L]
        total += err.sum(0).double()
    return (total / inputs.batch).float()


def train_bc(
    policy: ReferenceVLA,
    train: Windows,
    val: Windows,
    config: BCConfig | None = None,
    log_dir: str | Path | None = None,
    out: str | Path | None = None,
    progress: bool = True,
) -> BCResult:
    """Train `policy` in place on `train`, evaluate on `val`; save a bundle at `out` if given."""
    c = config or BCConfig()
    pc = policy.config
    if train.chunks.shape[1:] != (pc.chunk_len, pc.action_dim):
        raise ValueError(
            f"train chunks are [N, {pc.chunk_len}, {pc.action_dim}] for this policy, got {train.chunks.shape}"
        )
    if len(val) == 0 or len(train) == 0:
        raise ValueError("train and val windows must both be non-empty")
    fit_stats(policy, train)
    dev = policy.action_queries.device
    train_in, train_y = policy.encode(train.observations).to(dev), targets_of(policy, train).to(dev)
    val_in, val_y = policy.encode(val.observations), targets_of(policy, val)
    opt = GuardedOptimizer(
        policy.parameters(),
        OptimConfig(
            lr=c.lr,
            weight_decay=c.weight_decay,
            warmup_steps=c.warmup_steps,
            decay="cosine",
            total_steps=max(c.steps, c.warmup_steps + 1),
            clip_grad_norm=c.clip_grad_norm,
            skip_grad_norm=c.skip_grad_norm,
        ),
    )
    # save_bundle replaces `out` atomically, which would delete logs written inside it: stage them.
    staged = _staging_dir(log_dir, out)
    writer = _writer(staged or log_dir)
    initial = evaluate_l1(policy, val_in, val_y, c.eval_batch_size)
    result = BCResult(initial_val_l1=initial.tolist(), final_val_l1=initial.tolist())
    result.history.append({"step": 0, **_layer_record(initial)})
    gen = torch.Generator().manual_seed(c.seed)
    start = time.perf_counter()
    policy.train()
    bar = tqdm(range(1, c.steps + 1), desc="train-policy", disable=not progress, dynamic_ncols=True)
    for step in bar:
        idx = torch.randint(0, train_in.batch, (c.batch_size,), generator=gen).to(dev)
        loss, per_layer = bc_loss(policy, train_in.select(idx), train_y[idx], c.layer_loss_weight)
        res = opt.step(loss)
        if writer is not None:
            writer.add_scalar("train/loss", res.loss, step)
            writer.add_scalar("train/l1_last_layer", float(per_layer[-1]), step)
            writer.add_scalar("train/grad_norm", res.grad_norm, step)
            writer.add_scalar("train/lr", res.lr, step)
            writer.add_scalar("train/skipped_steps", opt.skipped_steps, step)
        if step % c.eval_every == 0 or step == c.steps:
            val_l1 = evaluate_l1(policy, val_in, val_y, c.eval_batch_size)
            result.final_val_l1 = val_l1.tolist()
            result.history.append({"step": step, "train_loss": res.loss, **_layer_record(val_l1)})
            if writer is not None:
                for i, v in enumerate(val_l1.tolist()):
                    writer.add_scalar(f"val/l1_layer{i}", v, step)
                writer.add_scalar("val/l1", float(val_l1[-1]), step)
            bar.set_postfix(loss=f"{res.loss:.3f}", val_l1=f"{float(val_l1[-1]):.3f}")
    policy.eval()
    result.skipped_steps = opt.skipped_steps
    result.seconds = time.perf_counter() - start
    if writer is not None:
        writer.close()
    if out is not None:
        result.bundle = str(policy.save(out))
    if staged is not None and log_dir is not None:
        shutil.move(str(staged), str(log_dir))
    return result


def _layer_record(l1: torch.Tensor) -> dict[str, float]:
    return {"val_l1": float(l1[-1]), **{f"val_l1_layer{i}": float(v) for i, v in enumerate(l1.tolist())}}


def _staging_dir(log_dir: str | Path | None, out: str | Path | None) -> Path | None:
    """A temporary sibling of `out` when log_dir lies inside the bundle directory `out`."""
    if log_dir is None or out is None:
        return None
    out_abs, log_abs = Path(out).resolve(), Path(log_dir).resolve()
    if out_abs == log_abs:
        raise ValueError(f"log_dir {log_dir} must not be the bundle directory itself (use e.g. {out}/logs)")
    if out_abs not in log_abs.parents:
        return None
    out_abs.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{out_abs.name}.logs.", dir=out_abs.parent))


def _writer(log_dir: str | Path | None):  # -> SummaryWriter | None
    if log_dir is None:
        return None
    from torch.utils.tensorboard import SummaryWriter  # optional dependency: only when logging

    return SummaryWriter(str(log_dir))
