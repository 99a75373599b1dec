"""A guarded optimiser step: AdamW + LR warm-up + grad-norm clipping + skip-and-count.

The seed's energy head went NaN near step 18k and its fix list was:
AdamW with weight decay, warm-up, clip the grad norm at 0.5, and skip a step whose grad norm
is non-finite or above 10. An absolute threshold fits one model's scale only (a healthy tiny
head reaches grad norms of 20 and would stall there), so a spike guard relative to the running
mean of recent grad norms is offered too (`skip_grad_ratio`). `GuardedOptimizer.step(loss)`
does all of it in one call, so no training loop can forget a guard:

    opt = GuardedOptimizer(model.parameters(), OptimConfig(lr=1e-4))
    result = opt.step(loss)          # zero grads, backward, check, clip, AdamW step
    if not result.applied: ...       # weights and AdamW moments are bitwise unchanged

A skipped step leaves weights and optimiser state untouched and does not advance the LR
schedule (warm-up counts applied updates). Under torch.distributed every rank takes the same
decision: the verdict is all-reduced, so one rank's bad batch never desynchronises the others.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.distributed as dist

LRDecay = Literal["constant", "cosine"]


@dataclass(frozen=True)
class OptimConfig:
    """AdamW and the step guards. Defaults are the fixes of the seed's post-mortem (module docstring)."""

    lr: float = 1e-4  # peak learning rate (reached at the end of warm-up)
    weight_decay: float = 1e-4  # AdamW decoupled weight decay (seed fix: 1e-4)
    betas: tuple[float, float] = (0.9, 0.999)  # AdamW moment decay rates
    eps: float = 1e-8  # AdamW denominator floor
    decay_norms_and_biases: bool = False  # False: 1-D params (biases, LayerNorm) get no weight decay
    warmup_steps: int = 100  # linear LR ramp from ~0 to lr over this many applied steps
    decay: LRDecay = "constant"  # LR after warm-up: constant, or cosine down to min_lr_ratio * lr
    total_steps: int = 0  # length of the cosine schedule in applied steps (needed for "cosine")
    min_lr_ratio: float = 0.1  # cosine floor as a fraction of lr
    clip_grad_norm: float = 0.5  # rescale gradients to at most this global L2 norm (seed fix: 0.5)
    skip_grad_norm: float = 10.0  # skip the step when the pre-clip grad norm exceeds this (seed: 10)
    skip_loss: float = math.inf  # skip the step when the loss exceeds this (inf = only non-finite)
    skip_grad_ratio: float = 0.0  # skip when grad norm > ratio x running mean of applied grad norms (0 = off)
    grad_norm_momentum: float = 0.98  # decay of that running mean (an EMA over applied steps)

    def __post_init__(self) -> None:
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.decay not in ("constant", "cosine"):
            raise ValueError(f"decay must be 'constant' or 'cosine', got {self.decay!r}")
        if self.decay == "cosine" and self.total_steps <= self.warmup_steps:
            raise ValueError(
                f"decay='cosine' needs total_steps > warmup_steps, got {self.total_steps} <= {self.warmup_steps}"
            )
        if not self.clip_grad_norm > 0 or not self.skip_grad_norm > 0:
            raise ValueError("clip_grad_norm and skip_grad_norm must be > 0")


@dataclass(frozen=True)
class StepResult:
    """What one guarded step did."""

    applied: bool  # False: skipped, weights and optimiser state unchanged
    loss: float  # the loss value (may be NaN/Inf on a skipped step)
    grad_norm: float  # global grad norm before clipping (NaN when not computed)
    lr: float  # learning rate the step used (or would have used)
    reason: str  # why it was skipped; "" when applied


class GuardedOptimizer:
    """AdamW over `params` whose every step is guarded; see the module docstring."""

    def __init__(self, params: Iterable[torch.nn.Parameter], config: OptimConfig | None = None) -> None:
        self.config = config or OptimConfig()
        c = self.config
        self.params = [p for p in params if p.requires_grad]
        if not self.params:
            raise ValueError("GuardedOptimizer got no trainable parameters")
        if c.decay_norms_and_biases:
            groups: list[dict[str, Any]] = [{"params": self.params, "weight_decay": c.weight_decay}]
        else:
            groups = [
                {"params": [p for p in self.params if p.dim() >= 2], "weight_decay": c.weight_decay},
                {"params": [p for p in self.params if p.dim() < 2], "weight_decay": 0.0},
            ]
            groups = [g for g in groups if g["params"]]
        self.optimizer = torch.optim.AdamW(groups, lr=self.lr_at(0), betas=c.betas, eps=c.eps)
        self.applied_steps = 0  # updates actually made; drives the LR schedule
        self.skipped_steps = 0  # steps refused by a guard
        self.grad_norm_ema = 0.0  # running mean of applied steps' grad norms (bias-corrected on use)

    # ------------------------------------------------------------------ schedule
    def lr_at(self, applied: int) -> float:
        """Learning rate of the (applied + 1)-th update."""
        c = self.config
        if applied < c.warmup_steps:
            return c.lr * (applied + 1) / (c.warmup_steps + 1)
        if c.decay == "constant":
            return c.lr
        t = min(1.0, (applied - c.warmup_steps) / max(1, c.total_steps - c.warmup_steps))
        return c.lr * (c.min_lr_ratio + (1 - c.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t)))

    @property
    def lr(self) -> float:
        return self.lr_at(self.applied_steps)

    # ------------------------------------------------------------------ the step
    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    def step(self, loss: torch.Tensor) -> StepResult:
        """Zero grads, backward `loss`, check loss and grad norm, clip, update (or skip)."""
        if loss.dim() != 0:
            raise ValueError(f"loss must be a scalar tensor, got shape {tuple(loss.shape)}")
        c = self.config
        self.zero_grad()
        # Backward even for a bad loss: under DDP every rank must join the gradient all-reduce.
        loss.backward()
        loss_value = float(loss.detach())
        grads = [p.grad for p in self.params if p.grad is not None]
        if grads:
            grad_norm = float(torch.nn.utils.clip_grad_norm_(self.params, c.clip_grad_norm))
        else:
            grad_norm = 0.0
        reason = ""
        if not math.isfinite(loss_value):
            reason = "non-finite loss"
        elif loss_value > c.skip_loss:
            reason = f"loss {loss_value:.4g} > skip_loss {c.skip_loss:g}"
        elif not math.isfinite(grad_norm):
            reason = "non-finite grad norm"
        elif grad_norm > c.skip_grad_norm:
            reason = f"grad norm {grad_norm:.4g} > skip_grad_norm {c.skip_grad_norm:g}"
        elif c.skip_grad_ratio > 0 and self.applied_steps >= 10 and grad_norm > c.skip_grad_ratio * self.typical_grad_norm:  # noqa: E501
            reason = f"grad norm {grad_norm:.4g} > {c.skip_grad_ratio:g} x running mean {self.typical_grad_norm:.4g}"
        if not _all_ranks_agree(reason == "", loss.device):
            reason = reason or "skipped on another rank"
        lr = self.lr
        if reason:
            self.zero_grad()
            self.skipped_steps += 1
            return StepResult(False, loss_value, grad_norm, lr, reason)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.step()
        self.zero_grad()
        self.applied_steps += 1
        m = c.grad_norm_momentum
        self.grad_norm_ema = m * self.grad_norm_ema + (1 - m) * grad_norm
        return StepResult(True, loss_value, grad_norm, lr, "")

    @property
    def typical_grad_norm(self) -> float:
        """Bias-corrected running mean of applied steps' grad norms."""
        if self.applied_steps == 0:
            return math.nan
        return self.grad_norm_ema / (1 - self.config.grad_norm_momentum**self.applied_steps)

    def skip(self, reason: str) -> StepResult:
        """Count a step refused before any loss existed (e.g. a non-finite batch)."""
        self.zero_grad()
        self.skipped_steps += 1
        return StepResult(False, math.nan, math.nan, self.lr, reason)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Optimiser moments + counters; the LR schedule is a pure function of applied_steps."""
        return {
            "optimizer": self.optimizer.state_dict(),
            "applied_steps": self.applied_steps,
            "skipped_steps": self.skipped_steps,
            "grad_norm_ema": self.grad_norm_ema,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.applied_steps = int(state["applied_steps"])
        self.skipped_steps = int(state["skipped_steps"])
        self.grad_norm_ema = float(state["grad_norm_ema"])


def _all_ranks_agree(ok: bool, device: torch.device) -> bool:
    """True when `ok` holds on every rank (just `ok` outside torch.distributed)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return ok
    if dist.get_backend() == "nccl" and device.type != "cuda":
        device = torch.device("cuda", torch.cuda.current_device())
    flag = torch.tensor([1.0 if ok else 0.0], device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item() > 0.5)
