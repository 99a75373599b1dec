"""The energy head's weights rearranged for the fused kernels (pure torch, no triton).

Two pairs of back-to-back linear maps in EnergyModel have nothing non-linear between them, so
they are folded into one matrix each, computed once in float64 when a scorer is built:

- context: keys/values = in_proj_{k,v}(state_linear.fc2(LN(x)))  ->  LN(x) @ W_kv + b_kv
- actions: queries = in_proj_q(action_linear.fc2(LN(x)) + PE[step]) ->  LN(x) @ W_q + table[step]
  where the positional encoding and both biases become a per-step bias table [H_max, hid], and
  the softmax scale 1/sqrt(d_head) times log2(e) is folded in as well, so the attention kernel
  works in base 2 (exp2) with no per-score multiply.

Every weight is stored transposed, [in, out], so that a kernel's [K, N] weight tile is
contiguous along N. `score_folded` runs the folded form in plain torch: tests use it to check the
algebra of this file apart from the kernels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from energy_rerank.energy import EnergyModel
from energy_rerank.nn import MLPResNet, MLPResNetBlock

LOG2E = 1.4426950408889634
# Inputs at least this wide get their LayerNorm folded into the weight and the epilogue (the K
# loop is then a bare product: 2-3x faster on the H100); narrower ones are normalised tile by tile
# as they load. Every LayerNorm of the head is folded by default.
FOLD_LN_MIN_K = 1
ACTIVATION_CODES = {"identity": 0, "sigmoid": 1, "softplus": 2}  # constexpr codes for the readout kernel


@dataclass(frozen=True)
class FoldedLinear:
    """y = act(LN(x) @ weight + bias [+ table[row % steps]]) [+ x]; one fused-linear launch."""

    weight: torch.Tensor  # [K, N] transposed linear weight, in the compute dtype
    bias: torch.Tensor  # [N] float32
    ln_weight: torch.Tensor | None  # [K] float32 LayerNorm gain applied to x first (None = no LN)
    ln_bias: torch.Tensor | None  # [K] float32 LayerNorm shift
    ln_eps: float  # LayerNorm epsilon
    relu: bool  # ReLU after the bias
    residual: bool  # add the input back after the ReLU (MLPResNet blocks; needs K == N)
    table: torch.Tensor | None = None  # [steps_max, N] float32 per-step bias (queries only)
    # LN folded into the epilogue (wide inputs: the context's D_h): weight holds gain * W, bias
    # holds shift @ W + b, and y = rstd * (x @ weight - mean * colsum) + bias, so x is read once.
    colsum: torch.Tensor | None = None  # [N] float32 column sums of the stored weight (folded LN only)

    @property
    def ln_folded(self) -> bool:
        return self.colsum is not None


@dataclass(frozen=True)
class FoldedEnergyHead:
    """All launches of one scoring call, in order, plus the readout constants."""

    context: tuple[FoldedLinear, ...]  # hidden [B*S, D] -> keys|values [B*S, 2*hid]
    actions: tuple[FoldedLinear, ...]  # actions [B*N*H, A] -> scaled queries [B*N*H, hid]
    out_proj: FoldedLinear  # attention output [B*N*H, hid] -> [B*N*H, hid]
    head: tuple[FoldedLinear, ...]  # prediction MLP up to its last LayerNorm
    readout_ln_weight: torch.Tensor  # [hid] float32: prediction_head.layer_norm2
    readout_ln_bias: torch.Tensor  # [hid] float32
    readout_ln_eps: float  # LayerNorm epsilon
    readout_weight: torch.Tensor  # [hid] float32: prediction_head.fc2 (hid -> 1)
    readout_bias: torch.Tensor  # [1] float32 (a tensor, so a launch never syncs to read it)
    activation: int  # ACTIVATION_CODES value
    act_prescale: float  # energy = act(raw * prescale) * scale + offset
    act_scale: float
    act_offset: float
    hidden: int  # width of the attention
    heads: int  # attention heads
    action_offset: int  # first scored action dim
    action_dim: int  # scored action dims
    max_steps: int  # rows of the positional table: the longest chunk that can be scored
    dtype: torch.dtype  # compute dtype of weights and stored intermediates


def _f64(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to(torch.float64)


def _linear(
    weight: torch.Tensor,  # [N, K] float64, nn.Linear layout
    bias: torch.Tensor,  # [N] float64
    dtype: torch.dtype,  # the stored weight's (compute) dtype
    ln: nn.LayerNorm | None = None,
    relu: bool = False,
    residual: bool = False,
    table: torch.Tensor | None = None,
    fold_ln_min_k: int = FOLD_LN_MIN_K,
) -> FoldedLinear:
    if ln is not None and weight.shape[1] >= fold_ln_min_k:
        w = (weight * _f64(ln.weight)[None, :]).t().contiguous().to(dtype)  # [K, N]
        return FoldedLinear(
            weight=w,
            bias=(weight @ _f64(ln.bias) + bias).float().contiguous(),
            ln_weight=None,
            ln_bias=None,
            ln_eps=float(ln.eps),
            relu=relu,
            residual=residual,
            table=None if table is None else table.to(torch.float32).contiguous(),
            colsum=w.to(torch.float64).sum(0).float().contiguous(),
        )
    return FoldedLinear(
        weight=weight.t().contiguous().to(dtype),
        bias=bias.to(torch.float32).contiguous(),
        ln_weight=None if ln is None else _f64(ln.weight).float().contiguous(),
        ln_bias=None if ln is None else _f64(ln.bias).float().contiguous(),
        ln_eps=1e-5 if ln is None else float(ln.eps),
        relu=relu,
        residual=residual,
        table=None if table is None else table.to(torch.float32).contiguous(),
    )


def _mlp_trunk(mlp: MLPResNet, dtype: torch.dtype, fold_ln_min_k: int) -> list[FoldedLinear]:
    """relu(fc1(LN1(x))) followed by the residual blocks: everything before layer_norm2."""
    fc1 = mlp.fc1
    layers = [_linear(_f64(fc1.weight), _f64(fc1.bias), dtype, mlp.layer_norm1, relu=True, fold_ln_min_k=fold_ln_min_k)]
    for block in mlp.mlp_resnet_blocks:
        assert isinstance(block, MLPResNetBlock)
        ln, lin = block.ffn[0], block.ffn[1]
        assert isinstance(ln, torch.nn.LayerNorm) and isinstance(lin, torch.nn.Linear)
        layers.append(
            _linear(_f64(lin.weight), _f64(lin.bias), dtype, ln=ln, relu=True, residual=True, fold_ln_min_k=fold_ln_min_k)
        )
    return layers


@torch.no_grad()
def fold_energy_head(
    model: EnergyModel,
    dtype: torch.dtype | None = None,
    fold_ln_min_k: int = FOLD_LN_MIN_K,
) -> FoldedEnergyHead:
    """EnergyModel -> FoldedEnergyHead on the model's device, weights in `dtype` (default: the model's).

    fold_ln_min_k: inputs at least this wide get their LayerNorm folded into the weight (tests
    raise it above every input width to fold none).
    """
    c = model.config
    dtype = dtype or model.compute_dtype
    hid, heads = c.hidden, c.heads
    w_in, b_in = _f64(model.cross.in_proj_weight), _f64(model.cross.in_proj_bias)
    wq, wk, wv = w_in[:hid], w_in[hid : 2 * hid], w_in[2 * hid :]
    bq, bk, bv = b_in[:hid], b_in[hid : 2 * hid], b_in[2 * hid :]

    ctx = model.state_linear
    w2, b2 = _f64(ctx.fc2.weight), _f64(ctx.fc2.bias)
    w_kv = torch.cat([wk @ w2, wv @ w2])  # [2*hid, hid]
    b_kv = torch.cat([wk @ b2 + bk, wv @ b2 + bv])  # [2*hid]
    context = [*_mlp_trunk(ctx, dtype, fold_ln_min_k), _linear(w_kv, b_kv, dtype, ln=ctx.layer_norm2, fold_ln_min_k=fold_ln_min_k)]

    act = model.action_linear
    scale = LOG2E / math.sqrt(hid // heads)
    w2, b2 = _f64(act.fc2.weight), _f64(act.fc2.bias)
    pe = _f64(model.pe_layer.pe)  # [H_max, hid]
    w_q = (wq @ w2) * scale  # [hid, hid]
    table = ((b2 + pe) @ wq.t() + bq) * scale  # [H_max, hid]
    actions = [
        *_mlp_trunk(act, dtype, fold_ln_min_k),
        _linear(w_q, torch.zeros_like(bq), dtype, ln=act.layer_norm2, table=table, fold_ln_min_k=fold_ln_min_k),
    ]

    out = model.cross.out_proj
    head = model.prediction_head
    prescale, act_scale, offset = {
        "identity": (1.0, 1.0, 0.0),
        "sigmoid": (c.sigmoid_prescale, c.sigmoid_scale, c.sigmoid_offset),
        "softplus": (c.softplus_prescale, c.softplus_scale, c.softplus_offset),
    }[c.activation]
    return FoldedEnergyHead(
        context=tuple(context),
        actions=tuple(actions),
        out_proj=_linear(_f64(out.weight), _f64(out.bias), dtype),
        head=tuple(_mlp_trunk(head, dtype, fold_ln_min_k)),
        readout_ln_weight=_f64(head.layer_norm2.weight).float(),
        readout_ln_bias=_f64(head.layer_norm2.bias).float(),
        readout_ln_eps=float(head.layer_norm2.eps),
        readout_weight=_f64(head.fc2.weight).reshape(-1).float(),
        readout_bias=_f64(head.fc2.bias).reshape(1).float(),
        activation=ACTIVATION_CODES[c.activation],
        act_prescale=prescale,
        act_scale=act_scale,
        act_offset=offset,
        hidden=hid,
        heads=heads,
        action_offset=c.action_offset,
        action_dim=c.action_dim,
        max_steps=int(pe.shape[0]),
        dtype=dtype,
    )


# ---------------------------------------------------------------------------- torch form (tests)
def apply_linear(layer: FoldedLinear, x: torch.Tensor, steps: int | None = None) -> torch.Tensor:
    """What one fused-linear launch computes, in float32 torch. x [M, K] -> [M, N]."""
    x = x.float()
    h = x
    if layer.ln_weight is not None:
        h = F.layer_norm(x, (x.shape[-1],), layer.ln_weight, layer.ln_bias, layer.ln_eps)
    if layer.ln_folded:
        h = F.layer_norm(x, (x.shape[-1],), eps=layer.ln_eps)
    y = h @ layer.weight.float() + layer.bias
    if layer.table is not None:
        assert steps is not None
        y = (y.view(-1, steps, y.shape[-1]) + layer.table[:steps]).view_as(y)
    if layer.relu:
        y = torch.relu(y)
    return y + x if layer.residual else y


def activate(head: FoldedEnergyHead, raw: torch.Tensor) -> torch.Tensor:
    r = raw * head.act_prescale
    if head.activation == ACTIVATION_CODES["sigmoid"]:
        r = torch.sigmoid(r)
    elif head.activation == ACTIVATION_CODES["softplus"]:
        r = F.softplus(r)
    return r * head.act_scale + head.act_offset


def score_folded(head: FoldedEnergyHead, hidden: torch.Tensor, valid: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """The folded head in float32 torch: hidden [B, S, D], valid [B, S], candidates [B, N, H, A_in] -> [B, N]."""
    b, s, _ = hidden.shape
    _, n, h, _ = candidates.shape
    hid, heads = head.hidden, head.heads
    x = hidden.reshape(b * s, -1)
    for layer in head.context:
        x = apply_linear(layer, x)
    k, v = x.view(b, s, 2, heads, hid // heads).permute(2, 0, 3, 1, 4)  # each [B, heads, S, dh]
    a = candidates[..., head.action_offset : head.action_offset + head.action_dim].reshape(b * n * h, -1)
    for layer in head.actions:
        a = apply_linear(layer, a, steps=h)
    q = a.view(b, n * h, heads, hid // heads).transpose(1, 2)  # [B, heads, N*H, dh], log2 units
    logits = (q @ k.transpose(-1, -2)) / LOG2E  # back to natural units for torch's softmax
    logits = logits.masked_fill(~valid[:, None, None, :], float("-inf"))
    z = (logits.softmax(-1) @ v).transpose(1, 2).reshape(b * n * h, hid)
    z = apply_linear(head.out_proj, z)
    for layer in head.head:
        z = apply_linear(layer, z)
    z = F.layer_norm(z, (hid,), head.readout_ln_weight, head.readout_ln_bias, head.readout_ln_eps)
    raw = (z @ head.readout_weight[:, None]).squeeze(-1) + head.readout_bias  # [B*N*H]
    return activate(head, raw).view(b, n, h).mean(-1)
