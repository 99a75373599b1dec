"""The Triton scorer: one scoring call as a short, fixed sequence of fused launches.

Two plans compute the same energies. "layered": for the seed architecture (1 context block, 1
action block, 2 head blocks) 12 fused launches, plus one `row_stats` pass before each of the 9
LayerNorm'd linears (LN folded into the weight; inside fused_linear), 21 in all:

    context  [B*S, D_h]  : LN+fc1+ReLU | block | LN+(fc2 . W_kv)         -> keys|values [B*S, 2*hid]
    actions  [B*N*H, A]  : LN+fc1+ReLU | block | LN+(fc2 . W_q)+PE table -> queries [B*N*H, hid]
    attention            : masked flash cross attention, all B x N*H rows x heads
    out_proj             : linear
    prediction head      : LN+fc1+ReLU | block | block
    readout              : LN + Linear(hid, 1) + activation + mean over H -> [B, N]

"fused" (fused_chain.py): each run of hid-wide layers is one launch per row block, with the
LayerNorm statistics merged in the previous layer's epilogue, 6 launches in all:

    context  : row_stats + LN+fc1+ReLU (full-grid GEMM over D_h) | chain(block, LN+(fc2 . W_kv))
    actions  : chain(LN+fc1+ReLU, block, LN+(fc2 . W_q)+PE table)
    attention
    tail     : chain(out_proj, LN+fc1+ReLU, block, block) + readout

"fused_cublas" (bf16 only): "fused" with the context's D_h-wide product made by cuBLAS
(torch.mm to fp32: 22 us against the Triton tile GEMM's 55 us at B = 8 on the H100) while
`row_stats` reads the same input on the side stream; the context chain then finishes that
layer's folded-LN epilogue as it loads the product (fused_chain.with_pre), so the library GEMM
costs no launch or memory pass more than the Triton one:

    context  : cuBLAS P = x @ W_fc1 (main) || row_stats(x) (side) | chain(epilogue(P), block, LN+(fc2 . W_kv))

Fewer launches but fewer, longer programs: which is faster depends on the GPU and the shape, so
`chains="auto"` lets the CUDA-graph wrapper capture every plan per bucket and keep the fastest.
A plan that fails (a triton or torch that cannot run it) is dropped under "auto" with one logged
error, and the next answers.

Inputs are read in whatever float dtype they come in (the first layers normalise in fp32), so no
cast or copy launch precedes the kernels; the whole call is graph-capturable (no host syncs).
On CUDA the action chain runs on a side stream, concurrently with the context chain it does not
depend on (a CUDA graph keeps the two as parallel branches): its small launches fill SMs that
the context's D_h-wide GEMM leaves idle in its last wave.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass

import torch

from energy_rerank.energy import EnergyModel
from energy_rerank.kernels.energy_attention import AttentionBlocks, masked_cross_attention
from energy_rerank.kernels.energy_readout import energy_readout
from energy_rerank.kernels.folded_weights import FOLD_LN_MIN_K, FoldedEnergyHead, fold_energy_head
from energy_rerank.kernels.fused_chain import ChainBlocks, PackedChain, fused_chain, pack_chain, with_pre
from energy_rerank.kernels.fused_linear import LinearBlocks, fused_linear
from energy_rerank.kernels.row_stats import row_stats
from energy_rerank.kernels.triton_support import CHAIN_MODES, dot_precision, triton_usable, unsupported_reason

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TritonBlocks:
    """Block-size overrides (tests use small ones so that every loop runs more than once)."""

    linear: LinearBlocks | None = None  # None: heuristic, or autotune on the GPU
    attention: AttentionBlocks | None = None  # None: AttentionBlocks()
    chain: ChainBlocks | None = None  # None: heuristic, or autotune on the GPU


@dataclass(frozen=True)
class _Chains:
    """The head's layer runs packed for the "fused" plan."""

    actions: PackedChain  # every action layer
    context: PackedChain  # the context layers after the first (the D_h-wide GEMM)
    tail: PackedChain  # out_proj and the prediction MLP, before the readout
    context_pre: PackedChain | None  # `context` finishing the first layer's epilogue (fused_cublas)


def _pack_chains(head: FoldedEnergyHead) -> _Chains:
    context = pack_chain(head.context[1:])
    try:
        context_pre: PackedChain | None = with_pre(context, head.context[0])
    except ValueError:  # a first layer the chain cannot finish (its LN not folded)
        context_pre = None
    return _Chains(
        actions=pack_chain(head.actions),
        context=context,
        tail=pack_chain([head.out_proj, *head.head]),
        context_pre=context_pre,
    )


def library_product_reason(device: torch.device, dtype: torch.dtype) -> str | None:
    """Why the fused_cublas plan cannot run here, or None. It needs bf16 weights (an fp32 cuBLAS
    product follows torch's global TF32 switch, not this scorer's fp32_precision) and, on CUDA, a
    torch whose mm can write fp32 from bf16 operands (`out_dtype`)."""
    if dtype != torch.bfloat16:
        return f"the fused_cublas plan computes in bfloat16, not {dtype}"
    if device.type == "cuda" and "dtype" not in torch.ops.aten.mm.overloads():
        return f"torch {torch.__version__} has no torch.mm(..., out_dtype=torch.float32)"
    return None


def library_product(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x [M, K] @ weight [K, N] -> [M, N] fp32, products of the stored values summed in fp32 (cuBLAS
    on CUDA; the interpreter's CPU tests compute the same in fp32)."""
    if x.is_cuda:
        return torch.mm(x, weight, out_dtype=torch.float32)
    return x.float() @ weight.float()


class TritonScorer:
    """Scorer protocol on the fused Triton kernels (CUDA; CPU tensors under TRITON_INTERPRET=1)."""

    name = "triton"
    # Plans whose every read of the inputs is a Triton launch, which can take the input's address
    # from device memory (`input_addresses`): a CUDA graph of them reads the caller's tensors in
    # place. fused_cublas cannot (cuBLAS takes its pointer at capture).
    addressable_plans = ("fused", "layered")

    def __init__(
        self,
        model: EnergyModel,
        dtype: torch.dtype | None = None,  # compute dtype (default: the model's); fp32 or bf16
        autotune: bool = True,  # search block sizes on the GPU (first call per shape)
        blocks: TritonBlocks | None = None,
        fold_ln_min_k: int = FOLD_LN_MIN_K,  # inputs this wide get their LN folded (tests raise it)
        fp32_precision: str = "tf32x3",  # fp32 dots: tf32x3 (about fp32) or ieee (no tensor cores)
        chains: str = "auto",  # "fused", "fused_cublas", "layered", or "auto": all that can run, timed per graph bucket
    ) -> None:
        device = next(model.parameters()).device
        if not triton_usable(device):
            raise RuntimeError(
                f"the Triton backend needs triton and a CUDA device (or TRITON_INTERPRET=1 with CPU "
                f"tensors); model is on {device}"
            )
        why = unsupported_reason(model.config)
        if why:
            raise ValueError(f"{why}. Use backend='torch'.")
        dtype = dtype or model.compute_dtype
        if dtype not in (torch.float32, torch.bfloat16):
            raise ValueError(f"the Triton backend computes in float32 or bfloat16, got {dtype}")
        dot_precision(torch.float32, fp32_precision)  # names a bad value now, not at the first call
        if chains not in CHAIN_MODES:
            raise ValueError(f"chains must be one of {CHAIN_MODES}, got {chains!r}")
        self.fp32_precision = fp32_precision
        self.model = model.eval()
        self.head: FoldedEnergyHead = fold_energy_head(model, dtype, fold_ln_min_k)
        self.device = device
        self.autotune = autotune
        self.blocks = blocks or TritonBlocks()
        self.side_stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        try:
            self.chains: _Chains | None = _pack_chains(self.head)
        except ValueError as e:  # e.g. LayerNorms left unfolded (fold_ln_min_k), or a very deep MLP
            if chains in ("fused", "fused_cublas"):
                raise ValueError(f"chains={chains!r} cannot run this head: {e}") from e
            self.chains = None
        no_library = library_product_reason(device, dtype)
        if self.chains is not None and self.chains.context_pre is None:
            no_library = "the context's first LayerNorm is not folded"
        if chains == "fused_cublas" and no_library:
            raise ValueError(f"chains='fused_cublas' cannot run here: {no_library}")
        # The plans GraphedScorer may choose between (it sets `plan` before each capture); eager
        # calls use `plan`: fused where it can run (fewer launches also means less host time).
        if chains == "auto":
            fused = ("fused",) + (() if no_library else ("fused_cublas",))
            self.plans: tuple[str, ...] = (*fused, "layered") if self.chains else ("layered",)
        else:
            self.plans = (chains,)
        self.plan = self.plans[0]
        # [3] int64 on the device, or None. When set, the addressable plans read hidden, valid and
        # candidates at the addresses it holds (`input_pointers`), laid out like the tensors passed,
        # which then only give the shapes: GraphedScorer sets it before capture and rewrites it
        # before a replay. hidden's address must be 16-byte aligned (its loads are vectorised).
        self.input_addresses: torch.Tensor | None = None

    def input_pointers(self, hidden: torch.Tensor, valid: torch.Tensor, candidates: torch.Tensor) -> tuple[int, int, int]:
        """The three addresses `input_addresses` holds for these inputs (candidates: the first scored action dim)."""
        return hidden.data_ptr(), valid.data_ptr(), candidates.data_ptr() + self.head.action_offset * candidates.element_size()

    def _linear(self, layer, x: torch.Tensor, steps: int = 1, x_address: torch.Tensor | None = None,
                x_align: int = 16) -> torch.Tensor:
        return fused_linear(
            layer, x, steps=steps, blocks=self.blocks.linear, autotune=self.autotune,
            fp32_precision=self.fp32_precision, x_address=x_address, x_align=x_align,
        )

    def _chain(self, chain: PackedChain, x: torch.Tensor, steps: int = 1, readout: bool = False,
               x_address: torch.Tensor | None = None, pre_stats: torch.Tensor | None = None) -> torch.Tensor:
        return fused_chain(
            chain, x, steps=steps, readout=self.head if readout else None, blocks=self.blocks.chain,
            autotune=self.autotune, fp32_precision=self.fp32_precision, pre_stats=pre_stats, x_address=x_address,
        )

    @torch.inference_mode()
    def score(self, hidden: torch.Tensor, valid: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """hidden [B, S, D], valid [B, S] bool, candidates [B, N, H, A_in] -> energies [B, N] float32."""
        f = self.head
        cfg = self.model.config
        if hidden.dim() != 3 or hidden.shape[-1] != cfg.context_dim:
            raise ValueError(f"hidden must be [B, S, {cfg.context_dim}], got {tuple(hidden.shape)}")
        b, s, _ = hidden.shape
        if valid.shape != (b, s) or valid.dtype != torch.bool:
            raise ValueError(f"valid must be bool [{b}, {s}], got {valid.dtype} {tuple(valid.shape)}")
        if candidates.dim() != 4 or candidates.shape[0] != b:
            raise ValueError(f"candidates must be [B={b}, N, H, A], got {tuple(candidates.shape)}")
        _, n, h, a_in = candidates.shape
        if h > f.max_steps:
            raise ValueError(f"candidates have H={h} steps; the model's positional table holds {f.max_steps}")
        if a_in < f.action_offset + f.action_dim:
            raise ValueError(
                f"candidates have {a_in} action dims; the energy head reads [{f.action_offset}, "
                f"{f.action_offset + f.action_dim})"
            )
        dev = self.device
        hidden = hidden.to(dev).contiguous()
        valid = valid.to(dev).contiguous()
        candidates = candidates.to(dev).contiguous()
        while True:
            plan = self.plan
            try:
                return self._score(hidden, valid, candidates, plan)
            except Exception:
                # The inputs were checked above, so this is a kernel or library (say, a triton
                # that will not compile the chain kernel). Under "auto" a robot keeps its
                # reranker: drop the plan for good and answer with the next one.
                if len(self.plans) < 2:
                    raise
                self.plans = tuple(p for p in self.plans if p != plan)
                self.plan = self.plans[0]
                log.exception("the %s plan failed; dropped, scoring with %s from now on", plan, self.plan)

    def _score(self, hidden: torch.Tensor, valid: torch.Tensor, candidates: torch.Tensor, plan: str) -> torch.Tensor:
        f = self.head
        b, s, _ = hidden.shape
        _, n, h, a_in = candidates.shape
        dev = self.device
        fused = plan in ("fused", "fused_cublas")
        assert not fused or self.chains is not None
        x = hidden.view(b * s, -1)  # [B*S, D]
        first = f.context[0]
        # The library product needs the weights' dtype in; other inputs take the Triton GEMM,
        # which reads any float dtype.
        library = plan == "fused_cublas" and x.dtype == first.weight.dtype
        at = self.input_addresses if plan in self.addressable_plans else None
        hidden_at, valid_at, actions_at = (None, None, None) if at is None else (at[0:1], at[1:2], at[2:3])
        side = self.side_stream  # None off CUDA: everything in order on the one stream
        main = torch.cuda.current_stream(dev) if side is not None else None
        if side is not None and main is not None:
            side.wait_stream(main)
        with torch.cuda.stream(side) if side is not None else contextlib.nullcontext():
            if library:
                stats = row_stats(x, first.ln_eps)  # [B*S, 2], concurrent with the product below
                stats_ready = side.record_event() if side is not None else None
            a = candidates.view(b * n * h, a_in)[:, f.action_offset : f.action_offset + f.action_dim]
            if fused:
                q = self._chain(self.chains.actions, a, steps=h, x_address=actions_at)  # type: ignore[union-attr]
            else:
                a = self._linear(f.actions[0], a, steps=h, x_address=actions_at, x_align=1)  # rows of A_in: unaligned
                for layer in f.actions[1:]:
                    a = self._linear(layer, a, steps=h)
                q = a  # [B*N*H, hid], scaled for exp2

        if library:
            product = library_product(x, first.weight)  # [B*S, hid] fp32
            if stats_ready is not None:
                torch.cuda.current_stream(dev).wait_event(stats_ready)
            kv = self._chain(self.chains.context_pre, product, pre_stats=stats)  # type: ignore[union-attr,arg-type]
        else:
            x = self._linear(first, x, x_address=hidden_at)
            if fused:
                kv = self._chain(self.chains.context, x)  # type: ignore[union-attr]
            else:
                for layer in f.context[1:]:
                    x = self._linear(layer, x)
                kv = x  # [B*S, 2*hid]

        if side is not None and main is not None:
            main.wait_stream(side)
        z = masked_cross_attention(q, kv, valid, f.heads, self.blocks.attention, self.fp32_precision,
                                   valid_address=valid_at)  # [B*N*H, hid]  # fmt: skip

        if fused:
            return self._chain(self.chains.tail, z, steps=h, readout=True).view(b, n)  # type: ignore[union-attr]
        z = self._linear(f.out_proj, z)
        for layer in f.head:
            z = self._linear(layer, z)
        return energy_readout(f, z, steps=h).view(b, n)  # [B, N]
