"""One Triton kernel for every linear layer of the energy head: LayerNorm prologue, fused epilogue.

y = relu?(LN?(x) @ W + bias [+ table[row % steps]]) [+ x]          x [M, K], W [K, N], y [M, N]

covers MLPResNet's first layer (LN, linear, ReLU), its residual blocks (LN, linear, ReLU, + x),
the folded keys/values and queries projections (LN, linear, per-step bias table) and out_proj.
By default every LayerNorm is folded into its weight (FoldedLinear.colsum): the K loop is a bare
product of the raw x tiles, and the epilogue applies y = rstd * (acc - mean * colsum) + bias with
each row's (mean, rstd) from a separate `row_stats` pass. On the H100 the earlier forms, which
did LayerNorm work on every x tile inside the K loop (statistics merged per tile, or each tile
normalised before the dot), ran the LN'd layers 2-3x slower than the same product without a
LayerNorm (bench/profile_kernels.py). The unfolded prologue (HAS_LN: a first loop gathers the
statistics, the second normalises each tile as it loads) remains for layers narrower than
`fold_ln_min_k`. All arithmetic is fp32; tl.dot takes bf16 operands for bf16 weights and
tf32x3 or ieee for fp32 weights (`fp32_precision`), accumulating in fp32.

Why not one kernel for a whole MLP: a 512-wide LayerNorm'd row chain needs the full [rows, 512]
activation per program to feed the next tl.dot, which Triton cannot slice out of registers; at
B*N*H = 4096 rows a layer's output is 4 MB (bf16), which stays in the H100's 50 MB L2, so each
extra layer costs a launch (a few us, made cheap by the CUDA graph) rather than HBM traffic.

Block sizes: see `heuristic_blocks` (a recorded heuristic, used under the interpreter and with
autotune off) and `AUTOTUNE_CONFIGS` (searched once per shape on the GPU, before graph capture).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from energy_rerank.kernels.folded_weights import FoldedLinear
from energy_rerank.kernels.input_address import addressed, check_address
from energy_rerank.kernels.row_stats import merge_moments, row_stats
from energy_rerank.kernels.triton_support import dot_dtype, dot_precision, interpreting


@dataclass(frozen=True)
class LinearBlocks:
    """Tile sizes of one fused-linear launch."""

    block_m: int  # rows per program
    block_n: int  # output columns per program
    block_k: int  # reduction chunk (>= 16 for tl.dot)
    num_warps: int = 4  # warps per program (GPU only)
    num_stages: int = 3  # software-pipelining depth of the K loop (GPU only)


def heuristic_blocks(m: int, k: int, n: int, dtype: torch.dtype) -> LinearBlocks:
    """Recorded heuristic, chosen before any GPU run (used under the interpreter and with autotune
    off; on the GPU autotune searches AUTOTUNE_CONFIGS): 64 x 128 output tiles give B*N*H = 4096
    rows x 512 columns = 256 programs, about two waves on 132 SMs, and keep the fp32 accumulator
    at 64 registers per thread with 4 warps; K chunks of 64 (bf16) or 32 (fp32) keep three
    pipeline stages of x and W tiles within ~100 KB of shared memory."""
    bn = min(128, max(16, triton.next_power_of_2(n)))
    bm = min(64, max(16, triton.next_power_of_2(m)))
    bk = 64 if dtype != torch.float32 else 32
    return LinearBlocks(block_m=bm, block_n=bn, block_k=min(bk, max(16, triton.next_power_of_2(k))))


# Searched per (power-of-two bucket of M, K, N, LN mode) on the GPU when autotuning is on (with
# CUDA graphs: during each bucket's warm-up); the heuristic's bf16 pick is the first.
AUTOTUNE_CONFIGS = [
    triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk}, num_warps=w, num_stages=st)
    for bm, bn, bk, w, st in [
        (64, 128, 64, 4, 3),
        (64, 128, 32, 4, 4),
        (32, 128, 64, 4, 3),
        (64, 64, 64, 4, 3),
        (128, 128, 64, 8, 3),
        (128, 64, 64, 4, 3),
        (64, 256, 64, 8, 3),
        (32, 64, 128, 4, 2),
        (128, 256, 64, 8, 3),  # H100 sweep: best for every 512-wide layer at B*N*H = 16384 rows
    ]
]


@triton.jit
def _fused_linear_kernel(
    x_ptr,  # [M, K] any float dtype, row stride stride_xm, unit column stride
    x_address_ptr,  # [1] int64: where x really is (read only when X_BY_ADDRESS)
    w_ptr,  # [K, NOUT] compute dtype, contiguous
    bias_ptr,  # [NOUT] fp32
    table_ptr,  # [steps_max, NOUT] fp32 (read only when HAS_TABLE)
    ln_w_ptr,  # [K] fp32 (read only when HAS_LN)
    ln_b_ptr,  # [K] fp32
    colsum_ptr,  # [NOUT] fp32 (read only when LN_FOLDED)
    stats_ptr,  # [M, 2] fp32 row mean, rstd of x (read only when LN_FOLDED; row_stats.py)
    y_ptr,  # [M, NOUT] compute dtype, row stride stride_ym
    M,
    K,
    NOUT,
    STEPS,
    M_BUCKET,  # next power of two of M: the autotune key, so varying B*N re-tunes only per octave
    stride_xm,
    stride_ym,
    eps,
    HAS_LN: tl.constexpr,  # normalise each x tile as it loads (statistics from a first pass)
    LN_FOLDED: tl.constexpr,  # LN folded into W and the epilogue: statistics from stats_ptr
    RELU: tl.constexpr,
    RESIDUAL: tl.constexpr,
    HAS_TABLE: tl.constexpr,
    X_BY_ADDRESS: tl.constexpr,  # x's data at the address in x_address_ptr (input_address.addressed)
    X_ALIGN: tl.constexpr,  # that address's guaranteed byte alignment
    DOT_DTYPE: tl.constexpr,
    PRECISION: tl.constexpr,  # tl.dot input_precision (fp32 operands: tf32x3 or ieee)
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < M
    col_ok = cols < NOUT
    offs_k = tl.arange(0, BLOCK_K)
    x_rows = addressed(x_ptr, x_address_ptr, X_BY_ADDRESS, X_ALIGN) + rows[:, None].to(tl.int64) * stride_xm

    mean = tl.zeros([BLOCK_M], dtype=tl.float32)
    m2 = tl.zeros([BLOCK_M], dtype=tl.float32)
    if HAS_LN:
        for k0 in range(0, K, BLOCK_K):
            kk = k0 + offs_k
            k_ok = kk < K
            x = tl.load(x_rows + kk[None, :], mask=row_ok[:, None] & k_ok[None, :], other=0.0).to(tl.float32)
            mean, m2 = merge_moments(mean, m2, x, k_ok, k0, K, BLOCK_K)
    rstd = 1.0 / tl.sqrt(m2 / K + eps)

    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        kk = k0 + offs_k
        k_ok = kk < K
        x = tl.load(x_rows + kk[None, :], mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        if HAS_LN:
            g = tl.load(ln_w_ptr + kk, mask=k_ok, other=0.0)
            b = tl.load(ln_b_ptr + kk, mask=k_ok, other=0.0)
            x = (x.to(tl.float32) - mean[:, None]) * rstd[:, None] * g[None, :] + b[None, :]
        w = tl.load(w_ptr + kk[:, None] * NOUT + cols[None, :], mask=k_ok[:, None] & col_ok[None, :], other=0.0)
        # x goes to the weight's dtype as the torch reference stores activations; bf16 inputs
        # already are, so on the GPU both casts vanish and the tile feeds the MMA as loaded.
        acc = tl.dot(x.to(w_ptr.dtype.element_ty).to(DOT_DTYPE), w.to(DOT_DTYPE), acc, input_precision=PRECISION)

    if LN_FOLDED:
        mean = tl.load(stats_ptr + rows * 2, mask=row_ok, other=0.0)
        rstd = tl.load(stats_ptr + rows * 2 + 1, mask=row_ok, other=0.0)
        colsum = tl.load(colsum_ptr + cols, mask=col_ok, other=0.0)
        acc = (acc - mean[:, None] * colsum[None, :]) * rstd[:, None]
    acc += tl.load(bias_ptr + cols, mask=col_ok, other=0.0)[None, :]
    out_mask = row_ok[:, None] & col_ok[None, :]
    if HAS_TABLE:
        step = rows % STEPS
        acc += tl.load(table_ptr + step[:, None] * NOUT + cols[None, :], mask=out_mask, other=0.0)
    if RELU:
        acc = tl.maximum(acc, 0.0)
    if RESIDUAL:
        acc += tl.load(x_rows + cols[None, :], mask=out_mask, other=0.0).to(tl.float32)
    y_ptrs = y_ptr + rows[:, None].to(tl.int64) * stride_ym + cols[None, :]
    tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=out_mask)


_autotuned = None


def _quick_bench(fn, quantiles=None):  # type: ignore[no-untyped-def]
    """Autotuning's timer: 5 ms warm-up and 20 ms of repeats per config (triton's default is 25 + 100),
    so a new shape bucket costs about 2 s of tuning rather than 10 (these kernels run in microseconds)."""
    from triton.testing import do_bench

    return do_bench(fn, warmup=5, rep=20, quantiles=quantiles)


def autotune_options() -> dict:
    """triton.autotune keywords for every kernel here: the quick timer, and an on-disk cache of
    the results, where the installed triton knows them."""
    options = inspect.signature(triton.autotune).parameters
    return {k: v for k, v in (("do_bench", _quick_bench), ("cache_results", True)) if k in options}


def _autotuned_kernel():
    global _autotuned
    if _autotuned is None:
        key = ["M_BUCKET", "K", "NOUT", "HAS_LN", "LN_FOLDED", "X_BY_ADDRESS", "PRECISION"]
        _autotuned = triton.autotune(AUTOTUNE_CONFIGS, key=key, **autotune_options())(_fused_linear_kernel)
    return _autotuned


def fused_linear(
    layer: FoldedLinear,
    x: torch.Tensor,  # [M, K], unit stride along K (a column slice of a wider tensor is fine)
    steps: int = 1,  # rows per table period (H) when the layer has a per-step table
    blocks: LinearBlocks | None = None,  # None: heuristic, or autotune when `autotune`
    autotune: bool = False,  # search AUTOTUNE_CONFIGS on the GPU (first call per shape)
    fp32_precision: str = "tf32x3",  # fp32 weights: tf32x3 (about fp32) or ieee (no tensor cores)
    x_address: torch.Tensor | None = None,  # [1] int64: x's data is at this address, laid out like x
    x_align: int = 16,  # the byte alignment that address is guaranteed to have (16 or 1)
) -> torch.Tensor:
    """One launch: [M, K] -> [M, N] in the layer's compute dtype."""
    k, n = layer.weight.shape
    if x.dim() != 2 or x.shape[1] != k or x.stride(1) != 1:
        raise ValueError(f"fused_linear: x must be [M, {k}] with unit column stride, got {tuple(x.shape)}")
    check_address(x_address, x)
    if layer.residual and k != n:
        raise ValueError(f"fused_linear: a residual layer needs K == N, got {k} -> {n}")
    m = x.shape[0]
    y = torch.empty(m, n, device=x.device, dtype=layer.weight.dtype)
    has_ln = layer.ln_weight is not None
    stats = row_stats(x, layer.ln_eps, x_address=x_address, x_align=x_align) if layer.ln_folded else layer.bias
    args = (
        x,
        x_address if x_address is not None else layer.bias,
        layer.weight,
        layer.bias,
        layer.table if layer.table is not None else layer.bias,
        layer.ln_weight if has_ln else layer.bias,
        layer.ln_bias if has_ln else layer.bias,
        layer.colsum if layer.ln_folded else layer.bias,
        stats,
        y,
        m,
        k,
        n,
        steps,
        triton.next_power_of_2(m),
        x.stride(0),
        y.stride(0),
        layer.ln_eps,
    )
    flags = dict(
        HAS_LN=has_ln,
        LN_FOLDED=layer.ln_folded,
        RELU=layer.relu,
        RESIDUAL=layer.residual,
        HAS_TABLE=layer.table is not None,
        X_BY_ADDRESS=x_address is not None,
        X_ALIGN=x_align,
        DOT_DTYPE=dot_dtype(layer.weight.dtype),
        PRECISION=dot_precision(layer.weight.dtype, fp32_precision),
    )
    if autotune and blocks is None and not interpreting():
        tuned_grid = lambda meta: (triton.cdiv(m, meta["BLOCK_M"]), triton.cdiv(n, meta["BLOCK_N"]))  # noqa: E731
        _autotuned_kernel()[tuned_grid](*args, **flags)
        return y
    bl = blocks or heuristic_blocks(m, k, n, layer.weight.dtype)
    grid = (triton.cdiv(m, bl.block_m), triton.cdiv(n, bl.block_n))
    _fused_linear_kernel[grid](
        *args,
        **flags,
        BLOCK_M=bl.block_m,
        BLOCK_N=bl.block_n,
        BLOCK_K=bl.block_k,
        num_warps=bl.num_warps,
        num_stages=bl.num_stages,
    )
    return y
