"""The fused Triton scorer against the core's plain-torch EnergyModel.score.

Without CUDA the kernels run under the Triton interpreter on CPU tensors: TRITON_INTERPRET=1 is
set below, before anything imports triton, because @triton.jit picks interpreter or compiler when
a kernel is defined and triton keeps that choice process-wide. It is set only when there is no
CUDA device, where no other test can use compiled triton, so the rest of the suite is unaffected.
With CUDA (`python bench/check_gpu.py`) the same tests run compiled on the GPU.
Sizes are tiny and block sizes small, so that every loop (K chunks, key chunks, row blocks)
runs more than once and ends on a partial block.
"""

from __future__ import annotations

import dataclasses
import os
import sys

import torch

ON_GPU = torch.cuda.is_available()
# Triton fixes interpreter-or-compiler process-wide at its own import: too late to switch then.
TRITON_IMPORTED_COMPILED = "triton" in sys.modules and os.environ.get("TRITON_INTERPRET") != "1"
if not ON_GPU:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import importlib  # noqa: E402
from types import SimpleNamespace  # noqa: E402

import pytest  # noqa: E402

from energy_rerank.config import EnergyConfig  # noqa: E402
from energy_rerank.energy import EnergyModel  # noqa: E402

pytest.importorskip("triton")

DEVICE = torch.device("cuda" if ON_GPU else "cpu")
KERNEL_MODULES = ("fused_linear", "fused_chain", "row_stats", "energy_attention", "energy_readout", "triton_scorer", "folded_weights")
FP32_TOL = 1e-3  # fp32 dots as tf32x3 on the GPU (the default fp32 precision)
BF16_TOL = 2e-2


@pytest.fixture(scope="module")
def k():
    """The kernel modules (interpreted on the CPU, compiled on a GPU)."""
    if not ON_GPU and TRITON_IMPORTED_COMPILED:
        pytest.skip("no CUDA, and triton was imported before TRITON_INTERPRET=1 could be set; run this file alone")
    return SimpleNamespace(**{n: importlib.import_module(f"energy_rerank.kernels.{n}") for n in KERNEL_MODULES})


def small_blocks(k):
    return k.triton_scorer.TritonBlocks(
        linear=k.fused_linear.LinearBlocks(block_m=16, block_n=32, block_k=16),
        attention=k.energy_attention.AttentionBlocks(block_m=16, block_s=16),
        chain=k.fused_chain.ChainBlocks(block_m=16, block_n=32, block_k=16),
    )


def make_model(activation: str = "softplus", hidden: int = 64, heads: int = 4, seed: int = 0) -> EnergyModel:
    torch.manual_seed(seed)
    cfg = EnergyConfig(
        context_dim=40, action_dim=7, action_offset=1, chunk_len=8, hidden=hidden, heads=heads, activation=activation
    )
    return EnergyModel(cfg).to(DEVICE).eval()


def make_inputs(b: int, n: int, h: int, s: int, mask: str, seed: int):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(b, s, 40, generator=g) * 2 + 0.5
    if mask == "random":
        valid = torch.rand(b, s, generator=g) > 0.4
        valid[:, -1] = True
    elif mask == "one_token":  # all but one context token masked, at a different place per context
        valid = torch.zeros(b, s, dtype=torch.bool)
        valid[torch.arange(b), torch.randint(0, s, (b,), generator=g)] = True
    else:
        valid = torch.ones(b, s, dtype=torch.bool)
    candidates = torch.rand(b, n, h, 9, generator=g) * 2 - 1
    return hidden.to(DEVICE), valid.to(DEVICE), candidates.to(DEVICE)


def reference(model: EnergyModel, hidden, valid, candidates) -> torch.Tensor:
    with torch.inference_mode():
        return model.score(model.encode_context(hidden, valid), candidates).float()


def max_rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    assert out.shape == ref.shape and out.dtype == torch.float32
    assert bool(torch.isfinite(out).all()), "non-finite energies"
    return float(((out - ref).abs() / ref.abs().clamp_min(1e-3)).max())


def assert_same_argmin(out: torch.Tensor, ref: torch.Tensor, tol: float) -> None:
    """Where the best candidate leads the second by more than the tolerance, both pick it."""
    top2 = ref.topk(min(2, ref.shape[1]), dim=1, largest=False).values
    for b in range(ref.shape[0]):
        if ref.shape[1] == 1 or top2[b, 1] - top2[b, 0] > tol * top2[b, 0].abs():
            assert int(out[b].argmin()) == int(ref[b].argmin()), f"context {b}: argmin differs"


# (B, N, H, S, mask, activation): S never a multiple of the 16-key block; N = 1 and N = 3.
SHAPES = [
    (2, 3, 5, 37, "random", "softplus"),
    (1, 1, 8, 19, "all", "sigmoid"),
    (3, 3, 3, 40 - 7, "one_token", "softplus"),
    (2, 5, 4, 21, "random", "identity"),
]


@pytest.mark.parametrize("chains", ["fused", "layered"])
@pytest.mark.parametrize("b,n,h,s,mask,activation", SHAPES)
def test_triton_fp32_matches_reference(k, b, n, h, s, mask, activation, chains):
    model = make_model(activation)
    inputs = make_inputs(b, n, h, s, mask, seed=b * 100 + s)
    ref = reference(model, *inputs)
    scorer = k.triton_scorer.TritonScorer(model, blocks=small_blocks(k), chains=chains)
    assert scorer.plan == chains
    out = scorer.score(*inputs)
    assert max_rel_err(out, ref) <= FP32_TOL
    assert_same_argmin(out, ref, FP32_TOL)


@pytest.mark.parametrize("chains", ["fused", "layered"])
def test_triton_fp32_ieee_matches_reference(k, chains):
    """fp32_precision="ieee" (no tensor cores) is the other fp32 dot on offer: same energies."""
    model = make_model("softplus")
    inputs = make_inputs(2, 3, 5, 37, "random", seed=237)
    ref = reference(model, *inputs)
    scorer = k.triton_scorer.TritonScorer(model, blocks=small_blocks(k), chains=chains, fp32_precision="ieee")
    assert max_rel_err(scorer.score(*inputs), ref) <= FP32_TOL


@pytest.mark.parametrize("chains", ["fused", "layered"])  # fused_cublas: test_triton_bf16_inputs_and_model
@pytest.mark.parametrize("b,n,h,s,mask,activation", [SHAPES[0], SHAPES[2]])
def test_triton_bf16_matches_fp32_reference(k, b, n, h, s, mask, activation, chains):
    model = make_model(activation)
    inputs = make_inputs(b, n, h, s, mask, seed=7)
    ref = reference(model, *inputs)
    scorer = k.triton_scorer.TritonScorer(model, dtype=torch.bfloat16, blocks=small_blocks(k), chains=chains)
    assert scorer.head.out_proj.weight.dtype == torch.bfloat16
    assert max_rel_err(scorer.score(*inputs), ref) <= BF16_TOL


@pytest.mark.parametrize("chains", ["fused", "fused_cublas", "layered"])
def test_triton_bf16_inputs_and_model(k, chains, monkeypatch):
    """A bf16 model fed bf16 hidden states: the kernels read bf16 directly (no cast launch), and
    fused_cublas hands the context's first product to the library (fp32 hidden would not)."""
    model = make_model("softplus")
    hidden, valid, cand = make_inputs(2, 3, 6, 23, "random", seed=3)
    hidden = hidden * 2 + 3  # a common offset: the epilogue finished in the chain must not lose it
    ref = reference(model, hidden, valid, cand)
    model_bf16 = make_model("softplus").to(torch.bfloat16)
    products = []
    real = k.triton_scorer.library_product
    monkeypatch.setattr(k.triton_scorer, "library_product", lambda x, w: products.append(x.shape) or real(x, w))
    scorer = k.triton_scorer.TritonScorer(model_bf16, blocks=small_blocks(k), chains=chains)
    out = scorer.score(hidden.bfloat16(), valid, cand)
    assert max_rel_err(out, ref) <= BF16_TOL
    assert products == ([(2 * 23, 40)] if chains == "fused_cublas" else [])
    scorer.score(hidden, valid, cand)  # fp32 hidden: the Triton GEMM reads it as it is
    assert len(products) == (1 if chains == "fused_cublas" else 0)


@pytest.mark.parametrize("chains", ["fused", "layered", "fused_cublas"])
def test_inputs_read_by_address(k, chains):
    """With `input_addresses` set (as GraphedScorer does for a zero-copy replay) the addressable
    plans read hidden, valid and candidates at those addresses; the tensors passed only give the
    shapes. fused_cublas (cuBLAS takes its pointer at capture) is not addressable and reads what
    it is passed. A scored action slice that starts past dim 0 (action_offset) is addressed too."""
    model = make_model("softplus")  # action_offset 1
    dtype = torch.bfloat16 if chains == "fused_cublas" else torch.float32
    hidden, valid, cand = make_inputs(2, 3, 4, 21, "random", seed=17)
    hidden = hidden.to(dtype)
    ref = reference(model, hidden.float(), valid, cand)
    scorer = k.triton_scorer.TritonScorer(model, dtype=dtype, blocks=small_blocks(k), chains=chains)
    scorer.input_addresses = torch.tensor(scorer.input_pointers(hidden, valid, cand), dtype=torch.int64, device=DEVICE)
    decoys = torch.zeros_like(hidden), torch.ones_like(valid), torch.zeros_like(cand)  # same layouts, other data
    out = scorer.score(*decoys)
    if chains in scorer.addressable_plans:
        assert max_rel_err(out, ref) <= FP32_TOL
    else:
        scorer.input_addresses = None
        assert torch.equal(out, scorer.score(*decoys))
    with pytest.raises(ValueError, match="input address"):
        k.row_stats.row_stats(hidden.view(-1, hidden.shape[-1]), 1e-5, x_address=torch.zeros(1, dtype=torch.int32))


@pytest.mark.parametrize("fold_ln_min_k", [1, 32, 10**6])
def test_layernorm_folded_or_not(k, fold_ln_min_k):
    """Every LN folded (default), only the wide context input (32), or none: same energies."""
    model = make_model("softplus")
    inputs = make_inputs(2, 3, 4, 27, "random", seed=11)
    hidden = inputs[0] * 3 + 4  # a large common offset: the folded path must not cancel it away badly
    ref = reference(model, hidden, *inputs[1:])
    scorer = k.triton_scorer.TritonScorer(model, blocks=small_blocks(k), fold_ln_min_k=fold_ln_min_k)
    f = scorer.head
    folded = [layer.ln_folded for layer in (*f.context, *f.actions, *f.head)]
    assert folded == [True] * len(folded) if fold_ln_min_k == 1 else folded[0] == (fold_ln_min_k <= 40)
    assert max_rel_err(scorer.score(hidden, *inputs[1:]), ref) <= FP32_TOL


def test_fused_linear_every_epilogue(k):
    """Each fused-linear variant against the torch form of the same folded layer."""
    model = make_model("softplus")
    folded = k.folded_weights.fold_energy_head(model)  # every LN folded (the default)
    prologue = k.folded_weights.fold_energy_head(model, fold_ln_min_k=10**6)  # LN applied tile by tile
    blocks = k.fused_linear.LinearBlocks(block_m=16, block_n=32, block_k=16)
    g = torch.Generator().manual_seed(5)
    cases = [
        (folded.context[0], torch.randn(37, 40, generator=g) + 3, 1),  # folded LN, ReLU, large offset
        (folded.context[1], torch.randn(37, 64, generator=g), 1),  # folded LN, ReLU, residual
        (prologue.context[1], torch.randn(37, 64, generator=g), 1),  # LN prologue, ReLU, residual
        (folded.actions[-1], torch.randn(30, 64, generator=g), 6),  # folded LN, per-step table
        (prologue.actions[-1], torch.randn(30, 64, generator=g), 6),  # LN prologue, per-step table
        (folded.out_proj, torch.randn(30, 64, generator=g), 1),  # plain linear
        (folded.actions[0], torch.randn(30, 9, generator=g)[:, 1:8], 1),  # strided column slice, K = 7
        (prologue.actions[0], torch.randn(30, 9, generator=g)[:, 1:8], 1),
    ]
    assert [c[0].ln_folded for c in cases] == [True, True, False, True, False, False, True, False]
    for layer, x, steps in cases:
        x = x.to(DEVICE)
        y = k.fused_linear.fused_linear(layer, x, steps=steps, blocks=blocks)
        ref = k.folded_weights.apply_linear(layer, x, steps=steps)
        assert float((y.float() - ref).norm() / ref.norm()) <= 1e-4


@pytest.mark.parametrize("mask", ["random", "one_token", "all"])
def test_attention_kernel_matches_sdpa(k, mask):
    g = torch.Generator().manual_seed(1)
    b, r, s, heads, dh = 3, 21, 37, 2, 16
    q = torch.randn(b * r, heads * dh, generator=g).to(DEVICE)
    kv = torch.randn(b * s, 2 * heads * dh, generator=g).to(DEVICE)
    valid = make_inputs(b, 1, 1, s, mask, seed=2)[1]
    z = k.energy_attention.masked_cross_attention(q, kv, valid, heads, k.energy_attention.AttentionBlocks(16, 16))
    qh = q.view(b, r, heads, dh).transpose(1, 2) / k.folded_weights.LOG2E  # undo the folded log2(e)
    kh, vh = kv.view(b, s, 2, heads, dh).permute(2, 0, 3, 1, 4)
    ref = torch.nn.functional.scaled_dot_product_attention(qh, kh, vh, attn_mask=valid[:, None, None, :], scale=1.0)
    ref = ref.transpose(1, 2).reshape(b * r, heads * dh)
    assert float((z - ref).abs().max()) <= 1e-4


def test_unsupported_shapes_are_named(k):
    model = make_model("softplus", hidden=48, heads=4)  # d_head 12: not a tl.dot tile
    with pytest.raises(ValueError, match="hidden/heads"):
        k.triton_scorer.TritonScorer(model)
    residual = make_model("softplus")
    residual.config = dataclasses.replace(residual.config, action_residual=True)
    with pytest.raises(ValueError, match="action_residual"):
        k.triton_scorer.TritonScorer(residual)
    scorer = k.triton_scorer.TritonScorer(make_model("softplus"))
    hidden, valid, cand = make_inputs(1, 2, 9, 5, "all", seed=0)  # H = 9 > chunk_len 8
    with pytest.raises(ValueError, match="H=9"):
        scorer.score(hidden, valid, cand)
    with pytest.raises(ValueError, match="valid must be bool"):
        scorer.score(hidden, valid.float(), cand[:, :, :8])
    with pytest.raises(ValueError, match="fp32_precision must be one of"):
        k.triton_scorer.TritonScorer(make_model("softplus"), fp32_precision="fp16")


def test_make_scorer_triton_backend_default_blocks(k):
    """The dispatch path with the recorded heuristic's block sizes (autotuned on a GPU)."""
    from energy_rerank.scoring.backends import make_scorer

    model = make_model("sigmoid")
    scorer = make_scorer(model, "triton", cuda_graphs=ON_GPU)
    assert scorer.backend == "triton"
    inputs = make_inputs(2, 3, 8, 29, "random", seed=21)
    ref = reference(model, *inputs)
    out = scorer.score(*inputs)
    assert max_rel_err(out, ref) <= FP32_TOL
    assert_same_argmin(out, ref, FP32_TOL)


@pytest.mark.parametrize("m,kdim,offset", [(1, 7, 0.0), (37, 40, 3.0), (19, 300, 100.0)])
def test_row_stats_matches_layer_norm_statistics(k, m, kdim, offset):
    """mean and 1/sqrt(var + eps) per row, K not a multiple of the chunk, a large common offset."""
    from energy_rerank.kernels.row_stats import row_stats

    g = torch.Generator().manual_seed(m)
    x = (torch.randn(m, kdim, generator=g) * 0.5 + offset).to(DEVICE)
    stats = row_stats(x, eps=1e-5, block_k=16)
    ref_mean = x.double().mean(1)
    ref_rstd = 1 / torch.sqrt(x.double().var(1, unbiased=False) + 1e-5)
    torch.testing.assert_close(stats[:, 0].double(), ref_mean, rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(stats[:, 1].double(), ref_rstd, rtol=1e-4, atol=0)


def _chain_reference(k, layers, x, steps):
    for layer in layers:
        x = k.folded_weights.apply_linear(layer, x, steps=steps)
    return x


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_chain_every_run_of_the_head(k, dtype):
    """The three chains of the fused plan against the torch form of the same folded layers:
    actions (strided K = 7 input, per-step table), context (output 2 x hidden), and the tail with
    the readout for H = 5 (padded to 8) and H = 3; rows not a multiple of the block, inputs with a
    large common offset (the LayerNorm statistics must not cancel it away badly)."""
    fw, fc = k.folded_weights, k.fused_chain
    model = make_model("softplus")
    head = fw.fold_energy_head(model, dtype)
    blocks = fc.ChainBlocks(block_m=16, block_n=32, block_k=16)
    g = torch.Generator().manual_seed(9)
    tol = 1e-4 if dtype == torch.float32 else 2e-2  # bf16: rounding of stored activations differs in order

    a = (torch.rand(3 * 5 * 5, 9, generator=g) * 2 - 1)[:, 1:8].to(DEVICE)
    y = fc.fused_chain(fc.pack_chain(head.actions), a, steps=5, blocks=blocks)
    ref = _chain_reference(k, head.actions, a, 5)
    assert y.dtype == dtype and y.shape == ref.shape
    assert float((y.float() - ref).norm() / ref.norm()) <= tol

    x = (torch.randn(37, 64, generator=g) + 4).to(DEVICE).to(dtype)
    y = fc.fused_chain(fc.pack_chain(head.context[1:]), x, blocks=blocks)
    ref = _chain_reference(k, head.context[1:], x, 1)
    assert y.shape == (37, 128)
    assert float((y.float() - ref).norm() / ref.norm()) <= tol

    # The whole context with its first (D_h-wide) product made outside the kernel, as the
    # fused_cublas plan does: the chain finishes that layer's folded-LN epilogue itself.
    xh = (torch.randn(37, 40, generator=g) * 2 + 5).to(DEVICE).to(dtype)
    first = head.context[0]
    product = xh.float() @ first.weight.float()  # [37, 64] fp32, what torch.mm(out_dtype=float32) returns
    stats = k.row_stats.row_stats(xh, first.ln_eps)
    pre_chain = fc.with_pre(fc.pack_chain(head.context[1:]), first)
    y = fc.fused_chain(pre_chain, product, blocks=blocks, pre_stats=stats)
    ref = _chain_reference(k, head.context, xh, 1)
    assert y.shape == (37, 128)
    assert float((y.float() - ref).norm() / ref.norm()) <= tol

    tail = [head.out_proj, *head.head]
    for steps, cands in ((5, 7), (3, 11)):
        z = torch.randn(cands * steps, 64, generator=g).to(DEVICE).to(dtype)
        e = fc.fused_chain(fc.pack_chain(tail), z, steps=steps, readout=head, blocks=blocks)
        h = torch.nn.functional.layer_norm(
            _chain_reference(k, tail, z, 1), (64,), head.readout_ln_weight, head.readout_ln_bias, head.readout_ln_eps
        )
        ref = fw.activate(head, h @ head.readout_weight + head.readout_bias).view(cands, steps).mean(1)
        assert e.shape == (cands,) and e.dtype == torch.float32
        assert float(((e - ref).abs() / ref.abs().clamp_min(1e-3)).max()) <= max(tol, 1e-5)


def test_fused_chain_refuses_what_it_cannot_run(k):
    fw, fc = k.folded_weights, k.fused_chain
    model = make_model("softplus")
    head = fw.fold_energy_head(model)
    with pytest.raises(ValueError, match="folded LayerNorms"):
        fc.pack_chain(fw.fold_energy_head(model, fold_ln_min_k=10**6).head)
    with pytest.raises(ValueError, match="last layer"):
        fc.pack_chain([head.actions[-1], head.head[0]])
    with pytest.raises(ValueError, match="1 to"):
        fc.pack_chain([head.head[1]] * (fc.MAX_CHAIN + 1))
    with pytest.raises(ValueError, match="a chain needs"):
        fc.pack_chain([head.actions[0], head.actions[0]])
    chain = fc.pack_chain(head.head)
    with pytest.raises(ValueError, match="x must be"):
        fc.fused_chain(chain, torch.zeros(4, 7, device=DEVICE))
    with pytest.raises(ValueError, match="pre layer needs a folded LayerNorm"):
        fc.with_pre(chain, head.out_proj)
    with pytest.raises(ValueError, match="must output the chain's width"):
        fc.with_pre(fc.pack_chain(head.actions), head.context[0])
    pre_chain = fc.with_pre(fc.pack_chain(head.context[1:]), head.context[0])
    with pytest.raises(ValueError, match="fp32 product"):
        fc.fused_chain(pre_chain, torch.zeros(4, 64, device=DEVICE))
    with pytest.raises(ValueError, match="without a pre layer"):
        fc.fused_chain(chain, torch.zeros(4, 64, device=DEVICE), pre_stats=torch.zeros(4, 2, device=DEVICE))
    with pytest.raises(ValueError, match="does not tile"):
        fc.fused_chain(chain, torch.zeros(4, 64, device=DEVICE), blocks=fc.ChainBlocks(16, 48, 16))
    # The scorer: chains="fused" names why it cannot; "auto" falls back to one launch per layer.
    with pytest.raises(ValueError, match="chains='fused' cannot run"):
        k.triton_scorer.TritonScorer(model, fold_ln_min_k=10**6, chains="fused")
    assert k.triton_scorer.TritonScorer(model, fold_ln_min_k=10**6).plans == ("layered",)
    assert k.triton_scorer.TritonScorer(model).plans == ("fused", "layered")
    # fused_cublas: bf16 only (an fp32 cuBLAS product follows torch's global TF32 switch)
    assert k.triton_scorer.TritonScorer(model, dtype=torch.bfloat16).plans == ("fused", "fused_cublas", "layered")
    with pytest.raises(ValueError, match="computes in bfloat16"):
        k.triton_scorer.TritonScorer(model, chains="fused_cublas")
    with pytest.raises(ValueError, match="chains must be one of"):
        k.triton_scorer.TritonScorer(model, chains="persistent")


@pytest.mark.gpu
@pytest.mark.skipif(not ON_GPU, reason="CUDA graphs need a GPU")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_graphs_capture_every_plan_and_keep_the_fastest(k, dtype):
    from energy_rerank.scoring.backends import make_scorer

    model = make_model("softplus")
    inputs = make_inputs(3, 5, 8, 29, "random", seed=4)
    ref = reference(model, *inputs)
    scorer = make_scorer(model.to(dtype), "triton")  # chains="auto", CUDA graphs
    out = scorer.score(inputs[0].to(dtype), *inputs[1:])
    assert max_rel_err(out, ref) <= (FP32_TOL if dtype == torch.float32 else BF16_TOL)
    graphed = scorer.impl
    (key, times), = graphed.plan_times.items()
    assert set(times) == ({"fused", "layered"} if dtype == torch.float32 else {"fused", "fused_cublas", "layered"})
    assert graphed.graphs[key].plan == min(times, key=times.__getitem__)


@pytest.mark.gpu
@pytest.mark.skipif(not ON_GPU, reason="CUDA graphs need a GPU")
def test_graphs_read_a_full_bucket_in_place_and_copy_otherwise(k):
    """A call whose B and N fill their buckets is replayed reading the caller's tensors (only their
    addresses are written); new tensors, a repeated set, partly filled buckets and a misaligned
    hidden view (copied) all give the right energies."""
    from energy_rerank.scoring.backends import make_scorer

    model = make_model("softplus")
    scorer = make_scorer(model, "triton", b_buckets=(2, 4), n_buckets=(5, 8))
    sets = [make_inputs(4, 5, 8, 29, "random", seed=s) for s in (1, 2)]
    for inputs in (*sets, sets[0]):
        assert max_rel_err(scorer.score(*inputs), reference(model, *inputs)) <= FP32_TOL
    (g,) = scorer.impl.graphs.values()
    assert g.address is not None and g.pointed_at == scorer.impl.inner.input_pointers(*sets[0])
    in_static = g.pointers(g.hidden, g.valid, g.candidates)
    inputs = make_inputs(3, 5, 8, 29, "random", seed=3)  # B = 3 in the bucket of 4: copied
    assert max_rel_err(scorer.score(*inputs), reference(model, *inputs)) <= FP32_TOL
    assert g.pointed_at == in_static
    hidden, valid, cand = sets[1]
    assert max_rel_err(scorer.score(*sets[1]), reference(model, *sets[1])) <= FP32_TOL  # in place again
    shifted = torch.empty(hidden.numel() + 1, device=hidden.device)[1:].view_as(hidden).copy_(hidden)
    assert shifted.is_contiguous() and shifted.data_ptr() % 16  # not 16-byte aligned: copied, not read in place
    assert max_rel_err(scorer.score(shifted, valid, cand), reference(model, hidden, valid, cand)) <= FP32_TOL
    assert g.pointed_at == in_static
    out = scorer.score(hidden, valid, cand[:, :3])  # N = 3 in the bucket of 5 (the same graph): copied
    assert max_rel_err(out, reference(model, hidden, valid, cand[:, :3])) <= FP32_TOL


def test_auto_falls_back_to_layered_when_the_chain_kernel_fails(k, monkeypatch, caplog):
    """Under chains="auto" a kernel failure in the fused plan (say, a triton that cannot compile
    it) costs one logged error, not the reranker: the call and every later one use the layered plan.
    Bad inputs are still refused, and a pinned "fused" plan raises."""
    model = make_model("softplus")
    inputs = make_inputs(2, 3, 4, 21, "random", seed=13)
    ref = reference(model, *inputs)

    def broken(*args, **kwargs):
        raise RuntimeError("chain kernel failed to compile")

    monkeypatch.setattr(k.triton_scorer, "fused_chain", broken)
    scorer = k.triton_scorer.TritonScorer(model, blocks=small_blocks(k))
    assert scorer.plan == "fused"
    assert max_rel_err(scorer.score(*inputs), ref) <= FP32_TOL
    assert scorer.plans == ("layered",) and scorer.plan == "layered"
    assert "the fused plan failed" in caplog.text
    # bf16: fused and fused_cublas both run the chain kernel; each is dropped in turn.
    scorer = k.triton_scorer.TritonScorer(model, dtype=torch.bfloat16, blocks=small_blocks(k))
    assert max_rel_err(scorer.score(*inputs), ref) <= BF16_TOL
    assert scorer.plans == ("layered",) and "the fused_cublas plan failed" in caplog.text
    with pytest.raises(ValueError, match="valid must be bool"):
        scorer.score(inputs[0], inputs[1].float(), inputs[2])
    pinned = k.triton_scorer.TritonScorer(model, blocks=small_blocks(k), chains="fused")
    with pytest.raises(RuntimeError, match="failed to compile"):
        pinned.score(*inputs)
