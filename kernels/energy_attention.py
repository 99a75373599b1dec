"""Masked cross attention from every candidate step to its own context: one fused Triton kernel.

    z[b, r, head] = softmax_s( q[b, r, head] . k[b, s, head]  (masked where not valid[b, s]) ) @ v[b, s, head]

for all B contexts x R = N*H query rows x heads in one launch. A program owns BLOCK_M query rows
of one context and one head and streams that context's keys/values through in BLOCK_S chunks
(flash-attention online softmax), so the [rows, S] scores and probabilities never reach global
memory, and K/V are read per context block, never copied per candidate: with N*H = 512 rows per
context and BLOCK_M = 64, each context's K/V (S x 64 per head) is read by 8 programs, from L2.

The queries arrive pre-scaled by log2(e)/sqrt(d_head) (folded into the query weights), so the
softmax runs on exp2. Masked keys score -inf; the running max starts at a finite -1e30 so a
chunk with no valid key gives exp2(-inf) = 0 and never inf - inf = NaN. A context with no valid
token at all gives 0/0 = NaN, as the torch reference does, and the reranker falls back on it.

Block sizes, chosen before any GPU run and kept by the H100 sweep over 24 configurations
(bench/profile_kernels.py --sweep): BLOCK_M = 64 rows (one Hopper warpgroup's MMA height),
BLOCK_S = 64 keys per chunk, 4 warps, 2 stages: d_head = 64 makes the q, k, v tiles 8 KB each in
bf16. B = 8, N = 64, H = 8 gives 8 x 8 x 8 = 512 programs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from energy_rerank.kernels.input_address import addressed, check_address
from energy_rerank.kernels.triton_support import dot_dtype, dot_precision


@dataclass(frozen=True)
class AttentionBlocks:
    """Tile sizes of the attention launch."""

    block_m: int = 64  # query rows per program (all of one context)
    block_s: int = 64  # keys per online-softmax step
    num_warps: int = 4  # warps per program (GPU only)
    num_stages: int = 2  # pipelining depth of the key loop (GPU only)


@triton.jit
def _masked_cross_attention_kernel(
    q_ptr,  # [B*R, heads*DH] scaled queries, row stride stride_q
    kv_ptr,  # [B*S, 2*heads*DH] keys | values, row stride stride_kv
    valid_ptr,  # [B, S] uint8, 1 = attend
    valid_address_ptr,  # [1] int64: where valid really is (read only when VALID_BY_ADDRESS)
    z_ptr,  # [B*R, heads*DH] output, row stride stride_z
    R,
    S,
    HID,
    stride_q,
    stride_kv,
    stride_z,
    DH: tl.constexpr,
    VALID_BY_ADDRESS: tl.constexpr,  # valid's data at the address in valid_address_ptr (input_address.addressed)
    DOT_DTYPE: tl.constexpr,
    PRECISION: tl.constexpr,  # tl.dot input_precision (fp32 operands: tf32x3 or ieee)
    BLOCK_M: tl.constexpr,
    BLOCK_S: tl.constexpr,
):
    pid_m = tl.program_id(0)
    head = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < R
    offs_d = tl.arange(0, DH)
    q_rows = (b * R + rows)[:, None]
    q = tl.load(q_ptr + q_rows * stride_q + head * DH + offs_d[None, :], mask=row_ok[:, None], other=0.0)
    q = q.to(DOT_DTYPE)

    valid_row = addressed(valid_ptr, valid_address_ptr, VALID_BY_ADDRESS, 1) + b * S
    k_base = kv_ptr + b * S * stride_kv + head * DH
    v_base = k_base + HID
    m_i = tl.full([BLOCK_M], -1e30, dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, DH], dtype=tl.float32)
    for s0 in range(0, S, BLOCK_S):
        keys = s0 + tl.arange(0, BLOCK_S)
        in_range = keys < S
        keep = tl.load(valid_row + keys, mask=in_range, other=0) != 0
        k = tl.load(k_base + keys[None, :] * stride_kv + offs_d[:, None], mask=in_range[None, :], other=0.0)
        scores = tl.dot(q, k.to(DOT_DTYPE), input_precision=PRECISION)  # [BLOCK_M, BLOCK_S], log2 units
        scores = tl.where(keep[None, :], scores, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(scores, axis=1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(scores - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        v = tl.load(v_base + keys[:, None] * stride_kv + offs_d[None, :], mask=in_range[:, None], other=0.0)
        pd = p.to(v_base.dtype.element_ty).to(DOT_DTYPE)
        acc = tl.dot(pd, v.to(DOT_DTYPE), acc * alpha[:, None], input_precision=PRECISION)
        m_i = m_new
    z = acc / l_i[:, None]
    z_ptrs = z_ptr + q_rows * stride_z + head * DH + offs_d[None, :]
    tl.store(z_ptrs, z.to(z_ptr.dtype.element_ty), mask=row_ok[:, None])


def masked_cross_attention(
    q: torch.Tensor,  # [B*R, hid] scaled queries (rows ordered by context)
    kv: torch.Tensor,  # [B*S, 2*hid] keys | values of each context token
    valid: torch.Tensor,  # [B, S] bool, True = attend
    heads: int,
    blocks: AttentionBlocks | None = None,
    fp32_precision: str = "tf32x3",  # fp32 inputs: tf32x3 (about fp32) or ieee (no tensor cores)
    valid_address: torch.Tensor | None = None,  # [1] int64: valid's data is at this address, laid out like valid
) -> torch.Tensor:
    """One launch -> attention output [B*R, hid] in q's dtype."""
    b, s = valid.shape
    check_address(valid_address, valid)
    hid = q.shape[1]
    dh = hid // heads
    if hid % heads or dh < 16 or dh & (dh - 1):
        raise ValueError(
            f"the Triton attention kernel needs hidden/heads to be a power of two >= 16 "
            f"(tl.dot tiles); got hidden={hid}, heads={heads} (d_head={hid / heads:g}). "
            f"Use backend='torch' for this model."
        )
    if kv.shape != (b * s, 2 * hid) or q.shape[0] % b:
        raise ValueError(f"kv must be [B*S={b * s}, {2 * hid}] and q rows a multiple of B={b}")
    r = q.shape[0] // b
    bl = blocks or AttentionBlocks()
    z = torch.empty_like(q)
    grid = (triton.cdiv(r, bl.block_m), heads, b)
    _masked_cross_attention_kernel[grid](
        q,
        kv,
        valid.view(torch.uint8),
        valid_address if valid_address is not None else kv,
        z,
        r,
        s,
        hid,
        q.stride(0),
        kv.stride(0),
        z.stride(0),
        DH=dh,
        VALID_BY_ADDRESS=valid_address is not None,
        DOT_DTYPE=dot_dtype(q.dtype),
        PRECISION=dot_precision(q.dtype, fp32_precision),
        BLOCK_M=bl.block_m,
        BLOCK_S=bl.block_s,
        num_warps=bl.num_warps,
        num_stages=bl.num_stages,
    )
    return z
