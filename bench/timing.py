"""Timing a scorer and the floors it is measured against (latency.py, check_gpu.py, profile_kernels.py).

Floors: the FLOPs the folded head must do over the matrix rate, and the bytes it must move
(inputs read once, weights read once, energies written once) over memory bandwidth. The larger
is the floor no implementation beats by much. FLOPs are counted as the Triton scorer computes
them (folded projections; multiply-add = 2).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass

import torch

from energy_rerank.config import EnergyConfig
from energy_rerank.scoring.inputs import random_inputs
from energy_rerank.scoring.protocol import Scorer

# Ceilings used when none are measured, near what check_gpu.py measured on an H100
# (bench/recorded/h100-2026-11-23: bf16 685-739 TFLOP/s, fp32 as TF32 360 TFLOP/s, copy 3.0 TB/s).
H100_BF16_FLOPS = 700e12  # dense bf16 tensor-core rate, FLOP/s
H100_TF32_FLOPS = 350e12  # fp32 operands on the tensor cores (TF32 products): half the bf16 rate
H100_BYTES_PER_S = 3.0e12  # HBM bandwidth, bytes/s


@dataclass(frozen=True)
class Floors:
    """Lower bounds for one scoring call."""

    flops: float  # FLOPs of the folded head
    bytes: float  # bytes that must cross device memory
    flop_s: float  # flops / matrix rate (s)
    byte_s: float  # bytes / bandwidth (s)

    @property
    def floor_s(self) -> float:
        return max(self.flop_s, self.byte_s)


def score_floors(
    cfg: EnergyConfig,
    b: int,
    n: int,
    s: int,
    h: int,
    dtype: torch.dtype,
    flop_rate: float | None = None,  # FLOP/s; default the H100's bf16 or fp32 tensor-core rate by dtype
    byte_rate: float = H100_BYTES_PER_S,
) -> Floors:
    hid, d = cfg.hidden, cfg.context_dim
    ctx_rows, act_rows = b * s, b * n * h
    square = hid * hid * 2  # FLOPs per row of one hid x hid linear
    flops = ctx_rows * (d * hid * 2 + cfg.context_blocks * square + 2 * square)  # fc1, blocks, folded k|v
    flops += act_rows * (cfg.action_dim * hid * 2 + cfg.action_blocks * square + square)  # fc1, blocks, folded q
    flops += act_rows * s * hid * 2 * 2  # q.k and p.v over all heads
    flops += act_rows * (square + square + cfg.head_blocks * square + hid * 2)  # out_proj, head
    item = torch.tensor([], dtype=dtype).element_size()
    weights = d * hid + (cfg.context_blocks + 2 + cfg.action_blocks + 1 + 2 + cfg.head_blocks) * hid * hid
    nbytes = b * s * d * item + b * s + act_rows * cfg.action_dim * 4 + weights * item + b * n * 4
    rate = flop_rate or (H100_TF32_FLOPS if dtype == torch.float32 else H100_BF16_FLOPS)
    return Floors(flops=float(flops), bytes=float(nbytes), flop_s=flops / rate, byte_s=nbytes / byte_rate)


@dataclass(frozen=True)
class Timing:
    """Per-call wall time of a scorer (CUDA events on the GPU, perf_counter on the CPU)."""

    median_ms: float
    p10_ms: float
    p90_ms: float
    calls: int

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def time_scorer(
    scorer: Scorer,
    b: int,
    n: int,
    s: int,
    d: int,
    dtype: torch.dtype,
    h: int = 8,
    a: int = 7,
    device: str | torch.device = "cuda",
    calls: int = 100,
    warmup: int = 10,
    input_sets: int = 4,  # rotated so repeated calls do not just measure a warm cache
) -> Timing:
    """Median time of scorer.score over `calls` calls, all launches included."""
    device = torch.device(device)
    sets = [random_inputs(b, n, s, d, h, a, dtype, device, seed=i) for i in range(input_sets)]
    for i in range(warmup):
        scorer.score(*sets[i % input_sets])
    samples: list[float] = []
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        for i in range(calls):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            scorer.score(*sets[i % input_sets])
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end))
    else:
        for i in range(calls):
            t0 = time.perf_counter()
            scorer.score(*sets[i % input_sets])
            samples.append((time.perf_counter() - t0) * 1e3)
    q = statistics.quantiles(samples, n=10) if len(samples) > 1 else samples * 9
    return Timing(median_ms=statistics.median(samples), p10_ms=q[0], p90_ms=q[-1], calls=calls)
