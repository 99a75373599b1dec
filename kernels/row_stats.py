"""LayerNorm statistics of every row, one launch: x [M, K] -> (mean, rstd) [M, 2] float32.

A LayerNorm'd linear layer runs as a bare matrix product on the raw x with the LayerNorm folded
into the weight and the epilogue (see FoldedLinear.colsum): it only needs each row's mean and
1/std. Gathering them inside the product's K loop (an earlier version) cost 2-3x on the H100:
the elementwise work on every x tile kept the loads from feeding the tensor cores directly. This
pass reads x once (a 512-wide bf16 activation of 16384 rows is 16 MB: ~6 us at 3 TB/s) and the
product then runs at the speed of a plain one.

Statistics are merged chunk by chunk with Chan et al.'s rule: one pass, no E[x^2] - E[x]^2
cancellation (VLA hidden states carry large per-channel offsets).

Block sizes (recorded heuristic): BLOCK_M = 16 rows x BLOCK_K = 128 columns per step, 4 warps:
a [16, 128] fp32 tile is 16 registers per thread, and 16384 rows give 1024 programs.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from energy_rerank.kernels.input_address import addressed, check_address


@triton.jit
def merge_moments(mean, m2, x, k_ok, k0, K, BLOCK_K: tl.constexpr):
    """Chan et al.'s merge of a [rows, BLOCK_K] chunk's (mean, M2) into the running ones (chunk
    k0 of K columns; x is 0 where not k_ok). Also the fused-linear LN prologue's statistics."""
    nb = tl.minimum(K - k0, BLOCK_K).to(tl.float32)
    seen = k0 * 1.0
    c_mean = tl.sum(x, axis=1) / nb
    d = tl.where(k_ok[None, :], x - c_mean[:, None], 0.0)
    delta = c_mean - mean
    total = seen + nb
    mean += delta * (nb / total)
    m2 += tl.sum(d * d, axis=1) + delta * delta * (seen * nb / total)
    return mean, m2


@triton.jit
def _row_stats_kernel(
    x_ptr,  # [M, K] any float dtype, row stride stride_x, unit column stride
    address_ptr,  # [1] int64: where x really is (read only when BY_ADDRESS)
    stats_ptr,  # [M, 2] float32 out: mean, rstd
    M,
    K,
    stride_x,
    eps,
    BY_ADDRESS: tl.constexpr,
    ALIGN: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < M
    x_rows = addressed(x_ptr, address_ptr, BY_ADDRESS, ALIGN) + rows[:, None].to(tl.int64) * stride_x
    offs_k = tl.arange(0, BLOCK_K)
    mean = tl.zeros([BLOCK_M], dtype=tl.float32)
    m2 = tl.zeros([BLOCK_M], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        kk = k0 + offs_k
        k_ok = kk < K
        x = tl.load(x_rows + kk[None, :], mask=row_ok[:, None] & k_ok[None, :], other=0.0).to(tl.float32)
        mean, m2 = merge_moments(mean, m2, x, k_ok, k0, K, BLOCK_K)
    rstd = 1.0 / tl.sqrt(m2 / K + eps)
    tl.store(stats_ptr + rows * 2, mean, mask=row_ok)
    tl.store(stats_ptr + rows * 2 + 1, rstd, mask=row_ok)


def row_stats(
    x: torch.Tensor,
    eps: float,
    block_m: int = 16,
    block_k: int = 128,
    x_address: torch.Tensor | None = None,  # [1] int64 on x's device: read the data there instead (see `addressed`)
    x_align: int = 16,  # the byte alignment that address is guaranteed to have
) -> torch.Tensor:
    """x [M, K] (unit column stride) -> [M, 2] float32 (mean, 1 / sqrt(var + eps)) per row."""
    if x.dim() != 2 or x.stride(1) != 1:
        raise ValueError(f"row_stats: x must be [M, K] with unit column stride, got {tuple(x.shape)}")
    check_address(x_address, x)
    m, k = x.shape
    stats = torch.empty(m, 2, device=x.device, dtype=torch.float32)
    block_k = min(block_k, max(16, triton.next_power_of_2(k)))
    _row_stats_kernel[(triton.cdiv(m, block_m),)](
        x, x_address if x_address is not None else stats, stats, m, k, x.stride(0), eps,
        BY_ADDRESS=x_address is not None, ALIGN=x_align, BLOCK_M=block_m, BLOCK_K=block_k, num_warps=4,
    )
    return stats
