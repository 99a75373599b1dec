#!/usr/bin/env python
"""Where a Triton scoring call spends its time, launch by launch, against cuBLAS / SDPA (GPU only).

    python bench/profile_kernels.py [--dtype bf16] [--bn 8x64 32x64] [--sweep]

For the seed head (D_h 4096, S 300, H 8, hidden 512, 8 heads) each launch of TritonScorer.score
is timed on its own (triton.testing.do_bench, median) on the real intermediate tensors, next to
the same matrix product in cuBLAS (torch.mm) or the same attention in SDPA, so the table says
which launch is far from what the library reaches. --sweep also times every block
configuration in SWEEP for each linear launch and for the attention launch. Totals compare the
sum of launches with the eager scorer and the CUDA-graph scorer (the latter includes copying the
inputs into the graph's static buffers). Rows "fused:*" and "cublas:*" time the fused plans' own
launches (chains of hidden-wide layers; the context's product on cuBLAS) and are not in the sum.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

from timing import time_scorer  # noqa: E402

from energy_rerank.config import EnergyConfig  # noqa: E402
from energy_rerank.energy import EnergyModel  # noqa: E402

S, H, A = 300, 8, 7
SWEEP_LINEAR = [  # (block_m, block_n, block_k, warps, stages); compiles dominate, so a short list
    (64, 64, 64, 4, 3), (64, 64, 128, 4, 3), (64, 128, 64, 4, 4), (64, 128, 128, 4, 3), (128, 64, 64, 4, 4),
    (128, 128, 64, 8, 3), (128, 128, 64, 8, 4), (128, 128, 128, 8, 3), (128, 256, 64, 8, 3), (64, 256, 64, 8, 4),
    (32, 128, 128, 4, 3), (16, 128, 256, 4, 3),
]
SWEPT_LINEAR = {"context[0]", "context[1]", "context[2]", "head[1]", "actions[2]"}  # one per kernel variant
SWEEP_ATTENTION = [(bm, bs, w, st) for bm in (64, 128) for bs in (32, 64, 128) for w in (4, 8) for st in (2, 3)]



def bench_ms(fn) -> float:
    from triton.testing import do_bench

    return float(do_bench(fn, warmup=10, rep=40, return_mode="median"))


def pair(text: str) -> tuple[int, int]:
    a, b = text.lower().split("x")
    return int(a), int(b)


def profile(dtype: torch.dtype, b: int, n: int, sweep: bool) -> dict:
    from energy_rerank.kernels import energy_attention as att
    from energy_rerank.kernels import fused_linear as fl
    from energy_rerank.kernels.energy_readout import energy_readout
    from energy_rerank.kernels.triton_scorer import TritonScorer
    from energy_rerank.scoring.backends import make_scorer
    from energy_rerank.scoring.inputs import random_inputs

    torch.manual_seed(0)
    model = EnergyModel(EnergyConfig()).cuda().to(dtype).eval()
    scorer = TritonScorer(model)
    f = scorer.head
    hidden, valid, cand = random_inputs(b, n, S, 4096, H, A, dtype, torch.device("cuda"))
    scorer.score(hidden, valid, cand)  # autotune every launch first
    rows: list[dict] = []

    def linear(name: str, layer, x: torch.Tensor, steps: int = 1) -> torch.Tensor:
        y = fl.fused_linear(layer, x, steps=steps, autotune=True)
        m, k = x.shape
        nout = layer.weight.shape[1]
        xa = x.contiguous().to(layer.weight.dtype)
        row = {
            "launch": name, "M": m, "K": k, "N": nout,
            "triton_ms": bench_ms(lambda: fl.fused_linear(layer, x, steps=steps, autotune=True)),
            "cublas_ms": bench_ms(lambda: torch.mm(xa, layer.weight)),
            "gflop": 2 * m * k * nout / 1e9,
        }  # fmt: skip
        if sweep and name in SWEPT_LINEAR:
            best: tuple[float, tuple[int, ...]] | None = None
            for bm, bn, bk, w, st in SWEEP_LINEAR:
                blocks = fl.LinearBlocks(bm, bn, min(bk, max(16, 1 << (k - 1).bit_length())), w, st)
                try:
                    t = bench_ms(lambda bl=blocks: fl.fused_linear(layer, x, steps=steps, blocks=bl))
                except Exception as e:  # out of shared memory etc.
                    t = float("inf")
                    print(f"  {name} {blocks}: {type(e).__name__}")
                if best is None or t < best[0]:
                    best = (t, (bm, bn, bk, w, st))
            assert best is not None  # the sweep lists are not empty
            row["sweep_best_ms"], row["sweep_best"] = best
        rows.append(row)
        return y

    a = cand.view(b * n * H, A)[:, f.action_offset : f.action_offset + f.action_dim]
    for i, layer in enumerate(f.actions):
        a = linear(f"actions[{i}]", layer, a, steps=H)
    q = a
    x = hidden.view(b * S, -1)
    for i, layer in enumerate(f.context):
        x = linear(f"context[{i}]", layer, x)
    kv = x

    z = att.masked_cross_attention(q, kv, valid, f.heads)
    z_attention = z  # [B*N*H, hid]: the tail chain's input
    dh = f.hidden // f.heads
    qh = q.view(b, n * H, f.heads, dh).transpose(1, 2).contiguous()
    kh, vh = (t.contiguous() for t in kv.view(b, S, 2, f.heads, dh).permute(2, 0, 3, 1, 4))
    mask = valid[:, None, None, :]
    row = {
        "launch": "attention", "M": b * n * H, "K": S, "N": f.hidden,
        "triton_ms": bench_ms(lambda: att.masked_cross_attention(q, kv, valid, f.heads)),
        "cublas_ms": bench_ms(lambda: F.scaled_dot_product_attention(qh, kh, vh, attn_mask=mask)),
        "gflop": 4 * b * n * H * S * f.hidden / 1e9,
    }  # fmt: skip
    if sweep:
        best: tuple[float, tuple[int, ...]] | None = None
        for bm, bs, w, st in SWEEP_ATTENTION:
            blocks = att.AttentionBlocks(bm, bs, w, st)
            try:
                t = bench_ms(lambda bl=blocks: att.masked_cross_attention(q, kv, valid, f.heads, bl))
            except Exception as e:
                t = float("inf")
                print(f"  attention {blocks}: {type(e).__name__}")
            if best is None or t < best[0]:
                best = (t, (bm, bs, w, st))
        assert best is not None
        row["sweep_best_ms"], row["sweep_best"] = best
    rows.append(row)

    z = linear("out_proj", f.out_proj, z)
    for i, layer in enumerate(f.head):
        z = linear(f"head[{i}]", layer, z)
    rows.append({
        "launch": "readout", "M": z.shape[0], "K": f.hidden, "N": 1,
        "triton_ms": bench_ms(lambda: energy_readout(f, z, steps=H)), "cublas_ms": float("nan"), "gflop": 0.0,
    })  # fmt: skip

    rows += chain_rows(scorer, hidden, cand, z_attention, b, n)

    eager = time_scorer(scorer, b, n, S, 4096, dtype, h=H, calls=100).median_ms
    graphed = time_scorer(make_scorer(model, "triton"), b, n, S, 4096, dtype, h=H, calls=100).median_ms
    static = torch.empty_like(hidden)
    copy_ms = bench_ms(lambda: static.copy_(hidden))
    return {"dtype": str(dtype), "B": b, "N": n, "rows": rows, "eager_total_ms": eager, "graph_total_ms": graphed,
            "input_copy_ms": copy_ms, "sum_of_launches_ms": sum(r["triton_ms"] for r in rows if "plan" not in r)}


def chain_rows(scorer, hidden: torch.Tensor, cand: torch.Tensor, z: torch.Tensor, b: int, n: int) -> list[dict]:
    """The fused plans' own launches (each chain of hidden-wide layers as one launch; the
    context's wide product in cuBLAS for fused_cublas), timed alone on the same inputs. Rows are
    named "fused:..." and are not part of the layered plan's sum."""
    from energy_rerank.kernels import fused_linear as fl
    from energy_rerank.kernels.fused_chain import fused_chain
    from energy_rerank.kernels.row_stats import row_stats
    from energy_rerank.kernels.triton_scorer import library_product

    f, chains = scorer.head, scorer.chains
    if chains is None:
        return []
    out = []

    def row(name: str, fn, m: int, k: int, nout: int, gflop: float) -> None:
        fn()  # compile / autotune outside the timing
        out.append({"launch": name, "M": m, "K": k, "N": nout, "triton_ms": bench_ms(fn),
                    "cublas_ms": float("nan"), "gflop": gflop, "plan": "fused"})  # fmt: skip

    def chain_gflop(m: int, chain) -> float:
        return 2 * m * chain.weight.numel() / 1e9

    a = cand.view(b * n * H, A)[:, f.action_offset : f.action_offset + f.action_dim]
    row("fused:actions", lambda: fused_chain(chains.actions, a, steps=H, autotune=True), a.shape[0], A, f.hidden,
        chain_gflop(a.shape[0], chains.actions))  # fmt: skip
    x = hidden.view(b * S, -1)
    first = scorer.head.context[0]
    y = fl.fused_linear(first, x, autotune=True)
    row("fused:context chain", lambda: fused_chain(chains.context, y, autotune=True), x.shape[0], f.hidden,
        2 * f.hidden, chain_gflop(x.shape[0], chains.context))  # fmt: skip
    if chains.context_pre is not None and x.dtype == first.weight.dtype and x.is_cuda:
        row("cublas:row_stats", lambda: row_stats(x, first.ln_eps), x.shape[0], x.shape[1], 2, 0.0)
        row("cublas:product", lambda: library_product(x, first.weight), x.shape[0], x.shape[1], f.hidden,
            2 * x.numel() * f.hidden / 1e9)  # fmt: skip
        p, st = library_product(x, first.weight), row_stats(x, first.ln_eps)
        row("cublas:context chain", lambda: fused_chain(chains.context_pre, p, autotune=True, pre_stats=st),
            x.shape[0], f.hidden, 2 * f.hidden, chain_gflop(x.shape[0], chains.context))  # fmt: skip
    row("fused:tail+readout", lambda: fused_chain(chains.tail, z, steps=H, readout=f, autotune=True), z.shape[0],
        f.hidden, 1, chain_gflop(z.shape[0], chains.tail))  # fmt: skip
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dtype", nargs="*", default=["bf16"], choices=("bf16", "fp32"))
    p.add_argument("--bn", nargs="*", type=pair, default=[(8, 64), (32, 64)], help="B x N cases")
    p.add_argument("--sweep", action="store_true", help="also sweep block configurations per launch")
    p.add_argument("--out", type=Path, help="write profile.json here")
    args = p.parse_args()
    if not torch.cuda.is_available():
        print("profile_kernels needs a CUDA device")
        return 2
    results = []
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
    for dt, (b, n) in itertools.product(args.dtype, args.bn):
        dtype = torch.bfloat16 if dt == "bf16" else torch.float32
        r = profile(dtype, b, n, args.sweep)
        results.append(r)
        print(f"\n{dt} B={b} N={n}: graph {r['graph_total_ms']:.4f} ms, eager {r['eager_total_ms']:.4f} ms, "
              f"sum of launches {r['sum_of_launches_ms']:.4f} ms, input copy {r['input_copy_ms']:.4f} ms")
        print(f"{'launch':12} {'M':>6} {'K':>5} {'N':>5} {'GFLOP':>6} {'triton':>8} {'library':>8} {'sweep':>8}  best")
        for row in r["rows"]:
            print(f"{row['launch']:12} {row['M']:>6} {row['K']:>5} {row['N']:>5} {row['gflop']:>6.2f} "
                  f"{row['triton_ms']:>8.4f} {row['cublas_ms']:>8.4f} {row.get('sweep_best_ms', float('nan')):>8.4f}  "
                  f"{row.get('sweep_best', '')}")
        if args.out:  # after every shape: a run cut off by its time limit keeps the finished ones
            (args.out / "profile.json").write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
