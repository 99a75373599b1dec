"""Training telemetry: running means of step metrics -> one console line + TensorBoard.

The seed lost 18k steps to a loss that never moved; these numbers make that visible at the
first log line: loss, E_pos / E_neg and their gap (healthy: E_pos < E_neg), energy
min/max/std, logit range, grad norm, skipped steps, and held-out ranking accuracy (how often
the expert chunk has the lowest energy among its negatives). Only rank 0 builds a Monitor
that writes; other ranks get a silent one.
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

from tqdm import tqdm

# Console columns, in order; anything else is still sent to TensorBoard.
CONSOLE_KEYS = (
    "loss", "E_pos", "E_neg", "E_gap", "E_min", "E_max", "E_std", "logit_min", "logit_max",
    "grad_norm", "lr", "l1",
)  # fmt: skip


class Monitor:
    def __init__(self, log_dir: str | Path | None, enabled: bool = True, tensorboard: bool = True) -> None:
        self.enabled = enabled
        self.sums: dict[str, float] = defaultdict(float)
        self.counts: dict[str, int] = defaultdict(int)
        self.writer = None
        if enabled and tensorboard and log_dir is not None:
            from torch.utils.tensorboard import SummaryWriter  # optional dependency: only when asked

            self.writer = SummaryWriter(str(log_dir))
        self.history: list[dict[str, float]] = []  # every flushed line, for summaries and tests

    def accumulate(self, metrics: dict[str, float]) -> None:
        """Add one step's metrics to the running means (non-finite values are counted as such)."""
        for k, v in metrics.items():
            self.sums[k] += float(v)
            self.counts[k] += 1

    def flush(self, step: int, skipped: int, prefix: str = "train") -> dict[str, float]:
        """Log the running means since the last flush; returns them."""
        means = {k: self.sums[k] / self.counts[k] for k in self.sums if self.counts[k]}
        means["skipped_steps"] = float(skipped)
        self.sums.clear()
        self.counts.clear()
        self.write(step, means, prefix)
        return means

    def write(self, step: int, values: dict[str, float], prefix: str) -> None:
        self.history.append({"step": float(step), **{f"{prefix}/{k}": v for k, v in values.items()}})
        if not self.enabled:
            return
        if self.writer is not None:
            for k, v in values.items():
                if math.isfinite(v):
                    self.writer.add_scalar(f"{prefix}/{k}", v, step)
        tqdm.write(format_line(step, values, prefix))

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def format_line(step: int, values: dict[str, float], prefix: str) -> str:
    """`[train step 200] loss 3.21 | E_pos 1.02 E_neg 2.31 gap 1.29 | ...` (readable in a terminal)."""
    parts = [f"[{prefix} step {step}]"]
    keys = [k for k in CONSOLE_KEYS if k in values] + sorted(
        k for k in values if k not in CONSOLE_KEYS and k != "skipped_steps"
    )
    parts += [f"{k} {_fmt(values[k])}" for k in keys]
    if "skipped_steps" in values:
        parts.append(f"skipped {int(values['skipped_steps'])}")
    return " ".join(parts)


def _fmt(v: float) -> str:
    if not math.isfinite(v):
        return str(v)
    return f"{v:.4g}"
