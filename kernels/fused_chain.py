"""A chain of the head's linear layers in one Triton launch per row block, optionally ending in the
readout: the launch count of a scoring call drops from 21 to 6.

    h_0 = x [M, K0];  h_{i+1} = relu?(LN?(h_i) @ W_i + b_i [+ table[row % steps]]) [+ h_i];  y = h_L

With a `pre` layer (`with_pre`), x is instead the fp32 product P = x' @ W_pre of a LayerNorm-folded
layer computed outside (cuBLAS: the context's D_h-wide GEMM), and the chain first finishes that
layer's epilogue, h_0 = relu?(rstd * (P - mean * colsum_pre) + b_pre), with each row's (mean, rstd)
of x' from `row_stats`. That epilogue is a pass over [BLOCK_M, K0] values the program reads anyway,
so a library GEMM can stand in for the Triton one without a launch or a round trip more.

Every layer is a `FoldedLinear` (LayerNorm folded into W and the epilogue, as in fused_linear), of
width HID except the first layer's input (K0: the action dims, or HID) and the last layer's output
(NLAST: 2*HID for keys|values). A program owns BLOCK_M rows for the whole chain: it computes each
layer's output BLOCK_N columns at a time, stores them (rounded to the compute dtype, as the torch
reference stores activations) into its own slice of a global scratch buffer, and merges each
chunk's LayerNorm moments (Chan's rule, `merge_moments`) for the next layer on the way out, so no
separate statistics pass runs. A barrier between layers makes the stores visible to all of the
program's threads; the two scratch halves alternate, and at 2 x BLOCK_M x HID values per program
the whole scratch stays in L2. With READOUT the program's rows are BLOCK_C candidates x H_P
steps (padding rows masked), and after the last layer it applies the readout (LayerNorm ->
Linear(HID, 1) -> activation -> mean over H) to its own rows, so per-step predictions never leave
the program, as in energy_readout.

Why this trades against `fused_linear` rather than replacing it: a program reads every weight of
the chain once per BLOCK_M rows (at 4096 rows and BLOCK_M = 64, 64 programs x 2 MB of bf16
weights, from L2), and the grid has M / BLOCK_M programs instead of M / BLOCK_M x HID / BLOCK_N,
so the separate launches can win once the rows fill the GPU many times over. TritonScorer's
`chains="auto"` captures every plan per CUDA-graph bucket and keeps the fastest (cuda_graphs.py).
The context's first layer (D_h = 4096 wide) always stays a separate full-grid GEMM (Triton's, or
cuBLAS's finished here by a `pre` prologue).

Block sizes: `heuristic_chain_blocks` under the interpreter and with autotune off;
`CHAIN_AUTOTUNE_CONFIGS` on the GPU (keyed by the power-of-two bucket of the candidate count).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import triton
import triton.language as tl

from energy_rerank.kernels.energy_readout import store_energies
from energy_rerank.kernels.folded_weights import FoldedEnergyHead, FoldedLinear
from energy_rerank.kernels.fused_linear import autotune_options
from energy_rerank.kernels.input_address import addressed, check_address
from energy_rerank.kernels.row_stats import merge_moments
from energy_rerank.kernels.triton_support import dot_dtype, dot_precision, interpreting

MAX_CHAIN = 6  # layers per launch (the seed head's longest chain is 4: out_proj + 3 MLP layers)


@dataclass(frozen=True)
class ChainBlocks:
    """Tile sizes of one chain launch."""

    block_m: int  # rows per program (with the readout: candidates x H padded to a power of two)
    block_n: int  # output columns per epilogue chunk (a divisor of HID)
    block_k: int  # reduction chunk (a divisor of HID, >= 16 for tl.dot)
    num_warps: int = 4  # warps per program (GPU only)
    num_stages: int = 2  # pipelining depth of the K loop (GPU only)


@dataclass(frozen=True)
class PackedChain:
    """A chain's layers packed into flat buffers, built once per scorer (`pack_chain`)."""

    weight: torch.Tensor  # [sum K_i * N_i] compute dtype: each layer's [K_i, N_i] weight, in order
    bias: torch.Tensor  # [sum N_i] fp32
    colsum: torch.Tensor  # [sum N_i] fp32 (0 where a layer has no folded LN)
    eps: torch.Tensor  # [layers] fp32 LayerNorm epsilons (a tensor: a launch inside a CUDA-graph capture cannot copy one in)
    table: torch.Tensor | None  # [steps_max, N_last] fp32 per-step bias of the last layer (queries)
    k0: int  # width of the chain's input
    hid: int  # width between layers
    n_last: int  # width of the chain's output
    ln_mask: int  # bit i: layer i has a folded LayerNorm on its input
    relu_mask: int  # bit i: ReLU after layer i's bias
    res_mask: int  # bit i: layer i adds its input back (K_i == N_i)
    layers: int  # number of layers
    # The epilogue of a LayerNorm-folded layer whose product arrives as the chain's input (`with_pre`):
    pre_colsum: torch.Tensor | None = None  # [K0] fp32 column sums of that layer's folded weight
    pre_bias: torch.Tensor | None = None  # [K0] fp32 its folded bias
    pre_relu: bool = False  # ReLU after its bias


def _largest_pow2_divisor(n: int) -> int:
    return n & -n


def pack_chain(layers: tuple[FoldedLinear, ...] | list[FoldedLinear]) -> PackedChain:
    """Check that `layers` can run as one chain launch and pack them."""
    if not 1 <= len(layers) <= MAX_CHAIN:
        raise ValueError(f"a fused chain runs 1 to {MAX_CHAIN} layers, got {len(layers)}")
    hid = layers[0].weight.shape[1]
    for i, layer in enumerate(layers):
        k, n = layer.weight.shape
        want_k = layers[0].weight.shape[0] if i == 0 else hid
        want_n = n if i == len(layers) - 1 else hid
        if k != want_k or n != want_n:
            raise ValueError(f"chain layer {i} is {k} -> {n}; a chain needs K0 -> {hid} -> ... -> {hid} -> N_last")
        if layer.ln_weight is not None:
            raise ValueError(f"chain layer {i} normalises tile by tile (fold_ln_min_k); a chain needs folded LayerNorms")
        if layer.table is not None and i != len(layers) - 1:
            raise ValueError("only a chain's last layer may carry a per-step table")
        if layer.residual and k != n:
            raise ValueError(f"chain layer {i}: a residual layer needs K == N, got {k} -> {n}")
    n_last = layers[-1].weight.shape[1]
    if _largest_pow2_divisor(hid) < 16 or _largest_pow2_divisor(n_last) < 16:
        raise ValueError(f"a fused chain needs widths divisible by 16, got hidden {hid}, output {n_last}")
    dev = layers[0].weight.device
    return PackedChain(
        weight=torch.cat([layer.weight.reshape(-1) for layer in layers]),
        bias=torch.cat([layer.bias for layer in layers]),
        colsum=torch.cat([
            layer.colsum if layer.colsum is not None else torch.zeros(layer.weight.shape[1], device=dev) for layer in layers
        ]),
        eps=torch.tensor([float(layer.ln_eps) for layer in layers], dtype=torch.float32, device=dev),
        table=layers[-1].table,
        k0=layers[0].weight.shape[0],
        hid=hid,
        n_last=n_last,
        ln_mask=sum(1 << i for i, layer in enumerate(layers) if layer.ln_folded),
        relu_mask=sum(1 << i for i, layer in enumerate(layers) if layer.relu),
        res_mask=sum(1 << i for i, layer in enumerate(layers) if layer.residual),
        layers=len(layers),
    )


def with_pre(chain: PackedChain, pre: FoldedLinear) -> PackedChain:
    """The same chain (weights shared) taking pre's fp32 product x' @ pre.weight as its input and
    applying pre's folded-LN epilogue first (see the module docstring)."""
    k, n = pre.weight.shape
    if pre.colsum is None or pre.table is not None or pre.residual:
        raise ValueError("a chain's pre layer needs a folded LayerNorm, no per-step table and no residual")
    if n != chain.k0 or chain.k0 != chain.hid:
        raise ValueError(f"a pre layer must output the chain's width {chain.hid}, got {k} -> {n} for K0 = {chain.k0}")
    return replace(chain, pre_colsum=pre.colsum, pre_bias=pre.bias, pre_relu=pre.relu)


def heuristic_chain_blocks(rows: int, hid: int, dtype: torch.dtype, h_p: int = 1) -> ChainBlocks:
    """Recorded heuristic (not timed on a GPU; chosen from `compile_report` for sm_90, where it
    compiles without spills for every chain of the seed head): 32-row programs, so 4096 rows make
    128 programs, about one wave on 132 SMs (a chain program runs every layer, so fewer, longer
    programs cost latency); bf16 128-column chunks with 8 warps, fp32 64-column chunks with 4."""
    bm = max(16, h_p, min(32, triton.next_power_of_2(max(rows, 1))))
    if dtype == torch.float32:
        return ChainBlocks(block_m=bm, block_n=min(64, _largest_pow2_divisor(hid)), block_k=min(64, _largest_pow2_divisor(hid)))
    bn, bk = min(128, _largest_pow2_divisor(hid)), min(64, _largest_pow2_divisor(hid))
    return ChainBlocks(block_m=bm, block_n=bn, block_k=bk, num_warps=8)


# Every config compiles for sm_90 without spills (bf16, seed head; `compile_report`), except the
# second, which spills 2 registers in the context chain. 64-row tiles run on the warpgroup MMA
# (HGMMA), 16- and 32-row ones on the older MMA; fp32 64 x 64 x 64 spills and is pruned by the
# tuner's timing, not here. BLOCK_C is in rows; the wrapper divides it by H_P for the readout.
CHAIN_AUTOTUNE_CONFIGS = [
    triton.Config({"BLOCK_C": bm, "BLOCK_N": bn, "BLOCK_K": bk}, num_warps=w, num_stages=st)
    for bm, bn, bk, w, st in [
        (32, 128, 64, 8, 2),
        (64, 128, 64, 4, 2),
        (64, 64, 64, 4, 3),
        (16, 128, 64, 4, 3),
        (64, 64, 32, 4, 2),
        (32, 64, 64, 4, 2),
    ]
]


@triton.jit
def _fused_chain_kernel(
    x_ptr,  # [M, K0] chain input, any float dtype, row stride stride_x, unit column stride
    x_address_ptr,  # [1] int64: where x really is (read only when X_BY_ADDRESS)
    w_ptr,  # packed weights, compute dtype (PackedChain.weight)
    bias_ptr,  # packed biases, fp32
    colsum_ptr,  # packed folded-LN column sums, fp32
    eps_ptr,  # [LAYERS] fp32 LayerNorm epsilons
    table_ptr,  # [steps_max, NLAST] fp32 per-step bias of the last layer (read only when HAS_TABLE)
    scratch_ptr,  # [programs, 2, BLOCK_M, max(HID, NLAST)] compute dtype, this launch's own
    y_ptr,  # [M, NLAST] contiguous output (written only without READOUT)
    ro_ln_w_ptr,  # [HID] fp32 readout LayerNorm gain (READOUT only)
    ro_ln_b_ptr,  # [HID] fp32
    ro_w_ptr,  # [HID] fp32 readout weight
    ro_b_ptr,  # [1] fp32 readout bias
    out_ptr,  # [C] fp32 energies (READOUT only)
    pre_stats_ptr,  # [M, 2] fp32 (mean, rstd) of the pre layer's input rows (PRE only)
    pre_colsum_ptr,  # [K0] fp32 (PRE only)
    pre_bias_ptr,  # [K0] fp32 (PRE only)
    C,  # candidates (READOUT) or rows
    H,  # steps per candidate (READOUT) or 1
    STEPS,  # table period
    C_BUCKET,  # next power of two of C: the autotune key
    stride_x,
    ro_eps,
    prescale,
    scale,
    offset,
    K0: tl.constexpr,
    HID: tl.constexpr,
    NLAST: tl.constexpr,
    LAYERS: tl.constexpr,
    LN_MASK: tl.constexpr,
    RELU_MASK: tl.constexpr,
    RES_MASK: tl.constexpr,
    HAS_TABLE: tl.constexpr,
    READOUT: tl.constexpr,
    PRE: tl.constexpr,  # 0: x is the chain's input; 1: x is a pre layer's fp32 product; 2: the same with ReLU
    X_BY_ADDRESS: tl.constexpr,  # x's data at the address in x_address_ptr (input_address.addressed; no alignment promised)
    ACTIVATION: tl.constexpr,  # 0 identity, 1 sigmoid, 2 softplus
    H_P: tl.constexpr,  # H padded to a power of two (1 without READOUT)
    DOT_DTYPE: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCK_C: tl.constexpr,  # candidates (rows without READOUT) per program
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    BLOCK_M: tl.constexpr = BLOCK_C * H_P
    pid = tl.program_id(0)
    r = tl.arange(0, BLOCK_M)
    cand = pid * BLOCK_C + r // H_P
    step = r % H_P
    row_ok = (cand < C) & (step < H)
    # 64-bit only for the program's first row; in-block offsets stay 32-bit (fewer registers:
    # full 64-bit pointer tiles made the chain spill on sm_90).
    first = pid.to(tl.int64) * BLOCK_C * H
    local = (r // H_P) * H + step  # row within the program's block
    rows = first + local
    offs_n = tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    SW: tl.constexpr = HID if HID > NLAST else NLAST  # scratch row width
    scratch = scratch_ptr + pid.to(tl.int64) * (2 * BLOCK_M * SW)
    x_rows = addressed(x_ptr, x_address_ptr, X_BY_ADDRESS, 1) + first * stride_x + (local * stride_x)[:, None]

    # Statistics of the chain's input (the later layers' come from the previous epilogue).
    mean = tl.zeros([BLOCK_M], dtype=tl.float32)
    m2 = tl.zeros([BLOCK_M], dtype=tl.float32)
    pre_rows = scratch + BLOCK_M * SW + r[:, None] * SW  # scratch half 1: layer 0 reads it with PRE
    if PRE:
        # Finish the pre layer: h_0 = relu?(rstd * (P - mean * colsum) + b), stored rounded, as
        # fused_linear would have stored it, with its moments merged for layer 0's LayerNorm.
        p_mean = tl.load(pre_stats_ptr + rows * 2, mask=row_ok, other=0.0)
        p_rstd = tl.load(pre_stats_ptr + rows * 2 + 1, mask=row_ok, other=0.0)
        for n0 in range(0, K0, BLOCK_N):
            cols = n0 + offs_n
            p = tl.load(x_rows + cols[None, :], mask=row_ok[:, None], other=0.0).to(tl.float32)
            p = (p - p_mean[:, None] * tl.load(pre_colsum_ptr + cols)[None, :]) * p_rstd[:, None]
            p += tl.load(pre_bias_ptr + cols)[None, :]
            if PRE == 2:
                p = tl.maximum(p, 0.0)
            pq = p.to(w_ptr.dtype.element_ty)
            tl.store(pre_rows + cols[None, :], pq)
            if LN_MASK & 1:
                mean, m2 = merge_moments(mean, m2, pq.to(tl.float32), cols < K0, n0, K0, BLOCK_N)
        tl.debug_barrier()
    elif LN_MASK & 1:
        for k0 in range(0, K0, BLOCK_K):
            kk = k0 + offs_k
            k_ok = kk < K0
            xt = tl.load(x_rows + kk[None, :], mask=row_ok[:, None] & k_ok[None, :], other=0.0).to(tl.float32)
            mean, m2 = merge_moments(mean, m2, xt, k_ok, k0, K0, BLOCK_K)
    rstd = 1.0 / tl.sqrt(m2 / K0 + tl.load(eps_ptr))

    for i in tl.static_range(LAYERS):
        K_I = K0 if i == 0 else HID
        N_I = NLAST if i == LAYERS - 1 else HID
        W_OFF = 0 if i == 0 else K0 * HID + (i - 1) * HID * HID
        NEXT_LN = (i == LAYERS - 1 and READOUT) or (i < LAYERS - 1 and (LN_MASK >> (i + 1)) & 1 == 1)
        if i == 0 and PRE:
            in_rows = pre_rows
            in_mask = r[:, None] >= 0
        elif i == 0:
            in_rows = x_rows
            in_mask = row_ok[:, None]
        else:
            in_rows = scratch + ((i - 1) % 2) * BLOCK_M * SW + r[:, None] * SW
            in_mask = r[:, None] >= 0  # scratch rows always exist (masked rows hold finite junk)
        out_rows = scratch + (i % 2) * BLOCK_M * SW + r[:, None] * SW
        n_mean = tl.zeros([BLOCK_M], dtype=tl.float32)
        n_m2 = tl.zeros([BLOCK_M], dtype=tl.float32)
        for n0 in range(0, N_I, BLOCK_N):
            cols = n0 + offs_n
            acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
            for k0 in range(0, K_I, BLOCK_K):
                kk = k0 + offs_k
                k_ok = kk < K_I
                xt = tl.load(in_rows + kk[None, :], mask=in_mask & k_ok[None, :], other=0.0)
                wt = tl.load(w_ptr + W_OFF + kk[:, None] * N_I + cols[None, :], mask=k_ok[:, None], other=0.0)
                acc = tl.dot(xt.to(w_ptr.dtype.element_ty).to(DOT_DTYPE), wt.to(DOT_DTYPE), acc, input_precision=PRECISION)
            if (LN_MASK >> i) & 1:
                colsum = tl.load(colsum_ptr + i * HID + cols)
                acc = (acc - mean[:, None] * colsum[None, :]) * rstd[:, None]
            acc += tl.load(bias_ptr + i * HID + cols)[None, :]
            if HAS_TABLE and i == LAYERS - 1:
                acc += tl.load(table_ptr + (rows % STEPS)[:, None] * NLAST + cols[None, :], mask=row_ok[:, None], other=0.0)
            if (RELU_MASK >> i) & 1:
                acc = tl.maximum(acc, 0.0)
            if (RES_MASK >> i) & 1:
                acc += tl.load(in_rows + cols[None, :], mask=in_mask, other=0.0).to(tl.float32)
            # Even the chain's output goes through scratch: a masked store to y straight from the
            # MMA layout made the kernel spill on sm_90; the copy below runs in a plain layout.
            yq = acc.to(w_ptr.dtype.element_ty)
            tl.store(out_rows + cols[None, :], yq)
            if NEXT_LN:
                # moments of the stored (rounded) values: what the reference's LayerNorm sees
                n_mean, n_m2 = merge_moments(n_mean, n_m2, yq.to(tl.float32), cols < N_I, n0, N_I, BLOCK_N)
        if i < LAYERS - 1:
            mean = n_mean
            rstd = 1.0 / tl.sqrt(n_m2 / HID + tl.load(eps_ptr + i + 1))
        else:
            mean = n_mean
            rstd = 1.0 / tl.sqrt(n_m2 / HID + ro_eps)
        tl.debug_barrier()  # this layer's stores are visible to every thread before the next reads

    last = scratch + ((LAYERS - 1) % 2) * BLOCK_M * SW + r[:, None] * SW
    if not READOUT:
        # y is contiguous and, without the readout, rows map 1:1 (H_P = H = 1). The mask is
        # rebuilt here: keeping row_ok live to this point made the kernel spill on sm_90.
        y_rows = y_ptr + first * NLAST + r[:, None] * NLAST
        in_range = (r < C - pid * BLOCK_C)[:, None]
        for n0 in range(0, NLAST, BLOCK_N):
            cols = n0 + offs_n
            tl.store(y_rows + cols[None, :], tl.load(last + cols[None, :]), mask=in_range)
    if READOUT:
        raw = tl.zeros([BLOCK_M], dtype=tl.float32)
        for n0 in range(0, HID, BLOCK_N):
            cols = n0 + offs_n
            yv = tl.load(last + cols[None, :]).to(tl.float32)
            g = tl.load(ro_ln_w_ptr + cols)
            beta = tl.load(ro_ln_b_ptr + cols)
            w = tl.load(ro_w_ptr + cols)
            yn = (yv - mean[:, None]) * rstd[:, None] * g[None, :] + beta[None, :]
            raw += tl.sum(yn * w[None, :], axis=1)
        raw = raw + tl.load(ro_b_ptr)
        store_energies(raw, row_ok, out_ptr, pid, C, H, prescale, scale, offset, ACTIVATION, H_P, BLOCK_C)


_autotuned: dict[int, object] = {}


def _rows_to_candidates(configs: list, h_p: int) -> list:
    """CHAIN_AUTOTUNE_CONFIGS name rows per program; with the readout a program owns whole candidates."""
    out = []
    for cfg in configs:
        kw = dict(cfg.kwargs)
        kw["BLOCK_C"] = max(1, kw["BLOCK_C"] // h_p)
        out.append(triton.Config(kw, num_warps=cfg.num_warps, num_stages=cfg.num_stages))
    return out


def _autotuned_kernel(h_p: int):
    if h_p not in _autotuned:
        key = ["C_BUCKET", "K0", "HID", "NLAST", "LAYERS", "READOUT", "PRE", "X_BY_ADDRESS", "H_P", "PRECISION"]
        configs = _rows_to_candidates(CHAIN_AUTOTUNE_CONFIGS, h_p)
        _autotuned[h_p] = triton.autotune(configs, key=key, **autotune_options())(_fused_chain_kernel)
    return _autotuned[h_p]


def fused_chain(
    chain: PackedChain,
    x: torch.Tensor,  # [M, K0], unit column stride (a column slice of a wider tensor is fine)
    steps: int = 1,  # H: the table period, and with `readout` the steps averaged per candidate
    readout: FoldedEnergyHead | None = None,  # end in the energy readout: return [M // steps] fp32
    blocks: ChainBlocks | None = None,  # None: heuristic, or autotune when `autotune`
    autotune: bool = False,
    fp32_precision: str = "tf32x3",
    pre_stats: torch.Tensor | None = None,  # [M, 2] fp32 row_stats of the pre layer's input (with_pre chains)
    x_address: torch.Tensor | None = None,  # [1] int64: x's data is at this address, laid out like x
) -> torch.Tensor:
    """One launch: x [M, K0] -> [M, N_last] in the compute dtype, or energies [M // steps] with `readout`.
    For a `with_pre` chain x is the pre layer's fp32 product and `pre_stats` its input's row_stats."""
    m = x.shape[0]
    if x.dim() != 2 or x.shape[1] != chain.k0 or x.stride(1) != 1:
        raise ValueError(f"fused_chain: x must be [M, {chain.k0}] with unit column stride, got {tuple(x.shape)}")
    pre = chain.pre_colsum is not None
    if pre and (x.dtype != torch.float32 or pre_stats is None or pre_stats.shape != (m, 2) or not pre_stats.is_contiguous()):
        raise ValueError("fused_chain: a chain with a pre layer takes its fp32 product as x and contiguous [M, 2] pre_stats")
    if not pre and pre_stats is not None:
        raise ValueError("fused_chain: pre_stats given for a chain without a pre layer (see with_pre)")
    check_address(x_address, x)
    if readout is not None and (m % steps or chain.n_last != chain.hid):
        raise ValueError(f"fused_chain readout: {m} rows are not whole candidates of {steps} steps")
    dtype = chain.weight.dtype
    h_p = triton.next_power_of_2(steps) if readout is not None else 1
    c = m // steps if readout is not None else m
    h = steps if readout is not None else 1
    most_rows = max(64, max(cfg.kwargs["BLOCK_C"] for cfg in CHAIN_AUTOTUNE_CONFIGS), h_p)
    # Big enough for any config's grid: programs x BLOCK_M <= rows rounded up to a block, padded.
    width = max(chain.hid, chain.n_last)
    scratch = torch.empty(((c * h_p + most_rows - 1) // most_rows + 1) * most_rows * 2 * width, device=x.device, dtype=dtype)
    if readout is not None:
        out = torch.empty(c, device=x.device, dtype=torch.float32)
        y = out  # unused
        ro = (readout.readout_ln_weight, readout.readout_ln_bias, readout.readout_weight, readout.readout_bias)
        act = (readout.readout_ln_eps, readout.act_prescale, readout.act_scale, readout.act_offset)
        activation = readout.activation
    else:
        y = torch.empty(m, chain.n_last, device=x.device, dtype=dtype)
        out = y
        ro = (chain.bias, chain.bias, chain.bias, chain.bias)
        act = (1e-5, 1.0, 1.0, 0.0)
        activation = 0
    args = (
        x, x_address if x_address is not None else chain.bias, chain.weight, chain.bias, chain.colsum, chain.eps,
        chain.table if chain.table is not None else chain.bias,
        scratch, y, *ro, out,
        pre_stats if pre else chain.bias, chain.pre_colsum if pre else chain.bias, chain.pre_bias if pre else chain.bias,
        c, h, steps, triton.next_power_of_2(c), x.stride(0), *act,
    )
    flags = dict(
        K0=chain.k0, HID=chain.hid, NLAST=chain.n_last, LAYERS=chain.layers, LN_MASK=chain.ln_mask,
        RELU_MASK=chain.relu_mask, RES_MASK=chain.res_mask, HAS_TABLE=chain.table is not None,
        READOUT=readout is not None, PRE=(2 if chain.pre_relu else 1) if pre else 0,
        X_BY_ADDRESS=x_address is not None, ACTIVATION=activation, H_P=h_p,
        DOT_DTYPE=dot_dtype(dtype), PRECISION=dot_precision(dtype, fp32_precision),
    )
    if autotune and blocks is None and not interpreting():
        grid = lambda meta: (triton.cdiv(c, meta["BLOCK_C"]),)  # noqa: E731
        _autotuned_kernel(h_p)[grid](*args, **flags)
        return out
    bl = blocks or heuristic_chain_blocks(c * h_p, chain.hid, dtype, h_p)
    if bl.block_m % h_p or bl.block_m > most_rows or chain.hid % bl.block_n or chain.hid % bl.block_k:
        raise ValueError(f"fused_chain: {bl} does not tile hidden {chain.hid} with H padded to {h_p}")
    block_c = bl.block_m // h_p
    _fused_chain_kernel[(triton.cdiv(c, block_c),)](
        *args, **flags, BLOCK_C=block_c, BLOCK_N=bl.block_n, BLOCK_K=bl.block_k,
        num_warps=bl.num_warps, num_stages=bl.num_stages,
    )
    return out
