"""Last step of the energy head in one Triton kernel: LayerNorm -> Linear(hid, 1) -> activation
-> mean over the H steps of each candidate.

A program owns BLOCK_C candidates, laid out as BLOCK_C x H_P rows (H padded to a power of two,
the padding rows masked), loads each row whole (hid <= 1024), and writes one energy per
candidate: the per-step predictions and energies live only in registers.

Block sizes (recorded heuristic): about 16 rows per program (BLOCK_C = 16 // H_P, at least 1)
keeps a [16, 512] fp32 tile at 64 registers per thread with 4 warps; B*N = 512 candidates gives
256 programs at H = 8.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from energy_rerank.kernels.folded_weights import FoldedEnergyHead
from energy_rerank.kernels.triton_support import MAX_HIDDEN


@triton.jit
def _energy_readout_kernel(
    x_ptr,  # [C*H, HID] last hidden of the prediction MLP, row stride stride_x
    ln_w_ptr,  # [HID] fp32
    ln_b_ptr,  # [HID] fp32
    w_ptr,  # [HID] fp32 readout weight
    bias_ptr,  # [1] fp32 readout bias
    out_ptr,  # [C] fp32 energies
    C,
    H,
    HID,
    stride_x,
    eps,
    prescale,
    scale,
    offset,
    ACTIVATION: tl.constexpr,  # 0 identity, 1 sigmoid, 2 softplus (folded_weights.ACTIVATION_CODES)
    H_P: tl.constexpr,
    HID_P: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    pid = tl.program_id(0)
    r = tl.arange(0, BLOCK_C * H_P)
    cand = pid * BLOCK_C + r // H_P
    step = r % H_P
    row_ok = (cand < C) & (step < H)
    rows = cand.to(tl.int64) * H + step
    cols = tl.arange(0, HID_P)
    col_ok = cols < HID
    mask = row_ok[:, None] & col_ok[None, :]
    x = tl.load(x_ptr + rows[:, None] * stride_x + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    mean = tl.sum(x, axis=1) / HID
    d = tl.where(col_ok[None, :], x - mean[:, None], 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(d * d, axis=1) / HID + eps)
    g = tl.load(ln_w_ptr + cols, mask=col_ok, other=0.0)
    beta = tl.load(ln_b_ptr + cols, mask=col_ok, other=0.0)
    w = tl.load(w_ptr + cols, mask=col_ok, other=0.0)
    y = d * rstd[:, None] * g[None, :] + beta[None, :]
    raw = tl.sum(y * w[None, :], axis=1) + tl.load(bias_ptr)
    store_energies(raw, row_ok, out_ptr, pid, C, H, prescale, scale, offset, ACTIVATION, H_P, BLOCK_C)


@triton.jit
def store_energies(raw, row_ok, out_ptr, pid, C, H, prescale, scale, offset,
                   ACTIVATION: tl.constexpr, H_P: tl.constexpr, BLOCK_C: tl.constexpr):
    """Per-step raw predictions [BLOCK_C * H_P] -> activation -> mean over H -> out[candidate]
    (also the end of fused_chain's readout)."""
    raw = raw * prescale
    if ACTIVATION == 1:
        raw = tl.sigmoid(raw)
    elif ACTIVATION == 2:
        # Stable softplus: max(x, 0) + log(1 + exp(-|x|)) (torch's threshold=20 branch agrees).
        raw = tl.maximum(raw, 0.0) + tl.log(1.0 + tl.exp(-tl.abs(raw)))
    energy = tl.where(row_ok, raw * scale + offset, 0.0)
    per_candidate = tl.sum(tl.reshape(energy, [BLOCK_C, H_P]), axis=1) / H
    out_c = pid * BLOCK_C + tl.arange(0, BLOCK_C)
    tl.store(out_ptr + out_c, per_candidate, mask=out_c < C)


def energy_readout(head: FoldedEnergyHead, x: torch.Tensor, steps: int) -> torch.Tensor:
    """x [C*H, hid] -> energies [C] float32 (one launch)."""
    rows, hid = x.shape
    if hid > MAX_HIDDEN:
        raise ValueError(f"the Triton readout kernel supports hidden <= {MAX_HIDDEN}, got {hid}")
    c = rows // steps
    h_p = triton.next_power_of_2(steps)
    block_c = max(1, 16 // h_p)
    out = torch.empty(c, device=x.device, dtype=torch.float32)
    _energy_readout_kernel[(triton.cdiv(c, block_c),)](
        x,
        head.readout_ln_weight,
        head.readout_ln_bias,
        head.readout_weight,
        head.readout_bias,
        out,
        c,
        steps,
        hid,
        x.stride(0),
        head.readout_ln_eps,
        head.act_prescale,
        head.act_scale,
        head.act_offset,
        ACTIVATION=head.activation,
        H_P=h_p,
        HID_P=triton.next_power_of_2(hid),
        BLOCK_C=block_c,
        num_warps=4,
    )
    return out
