#!/usr/bin/env python
"""Latency, throughput and scaling of energy scoring and of the whole service.

Two parts, both written to OUT/ as results.jsonl + results.csv + PNG plots, with a one-screen
table on stdout:

1. scoring only: providers seed / torch / torch_compile / onnxruntime / triton over a grid of
   B, N, S, D_h and dtype (the seed head: hidden 512, 8 heads, H = 8, A = 7);
2. end to end: the real server (`energy-rerank serve`, embedded default unless --policy and
   --energy are given) and the real client on loopback, N = 1 vs N = 64, batching off and on,
   concurrency 1..64: p50/p90/p99 per stage and the gRPC + serialisation overhead.

    python bench/latency.py --quick          # CPU, a few minutes
    python bench/latency.py --device cuda    # the full GPU grid
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))

import e2e  # noqa: E402
import providers  # noqa: E402
import report  # noqa: E402
from timing import score_floors, time_scorer  # noqa: E402

from energy_rerank.config import EnergyConfig  # noqa: E402
from energy_rerank.energy import EnergyModel  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def grid(args: argparse.Namespace, device: torch.device) -> list[dict]:
    """Scoring configurations to run, as dicts of B, N, S, D, dtype."""
    if args.quick:
        shapes = [(1, 16), (4, 16), (1, 64)]
        sizes = [(64, 512)]
        dtypes = ["fp32"]
    elif device.type == "cuda":
        shapes = [(1, 64), (8, 64), (32, 64), (8, 256), (8, 16), (8, 1024)]
        sizes = [(300, 4096)]
        dtypes = ["fp32", "bf16"]
    else:
        shapes = [(1, 16), (1, 64), (8, 64), (1, 256)]
        sizes = [(64, 512), (300, 4096)]
        dtypes = ["fp32"]
    shapes = args.bn or shapes
    sizes = args.sd or sizes
    dtypes = args.dtypes or dtypes
    return [
        {"B": b, "N": n, "S": s, "D": d, "dtype": dt}
        for (b, n), (s, d), dt in itertools.product(shapes, sizes, dtypes)
    ]


def run_scoring(args: argparse.Namespace, device: torch.device, out: Path, meta: dict) -> list[dict]:
    records = []
    configs = grid(args, device)
    names = args.providers or [p for p in providers.PROVIDERS if not (args.quick and p == "torch_compile")]
    models: dict[tuple, EnergyModel] = {}
    bar = tqdm(list(itertools.product(configs, names)), desc="scoring", unit="case")
    for cfg, name in bar:
        bar.set_postfix_str(f"{name} B={cfg['B']} N={cfg['N']} S={cfg['S']} D={cfg['D']} {cfg['dtype']}")
        dtype = DTYPES[cfg["dtype"]]
        why = providers.unavailable_reason(name, device)
        if name == "onnxruntime" and dtype != torch.float32:
            why = "the ONNX export is fp32"
        if name == "triton_fused_cublas" and dtype != torch.bfloat16:
            why = "the fused_cublas plan is bf16 only"
        if name == "seed" and cfg["B"] * cfg["N"] * cfg["S"] * cfg["D"] > args.seed_limit:
            why = f"context copy of {cfg['B'] * cfg['N']} x {cfg['S']} x {cfg['D']} exceeds --seed-limit"
        base = {"kind": "score", "provider": name, **cfg, "H": args.steps, "A": 7, "hidden": 512, "heads": 8, **meta}
        if why:
            records.append({**base, "skipped": why})
            continue
        key = (cfg["D"], cfg["dtype"])
        if key not in models:
            ecfg = EnergyConfig(context_dim=cfg["D"], chunk_len=args.steps)
            models[key] = EnergyModel(ecfg).to(device=device, dtype=dtype).eval()
        model = models[key]
        try:
            scorer = providers.build(name, model, args.steps, workdir=out / "onnx")
            t = time_scorer(scorer, cfg["B"], cfg["N"], cfg["S"], cfg["D"], dtype, h=args.steps,
                            device=device, calls=args.calls, warmup=args.warmup)  # fmt: skip
        except Exception as e:  # one failing provider must not lose the others' numbers
            records.append({**base, "skipped": f"error: {type(e).__name__}: {e}"})
            continue
        # Floors use H100 rates (timing.py); on other devices only the achieved rate means much.
        f = score_floors(model.config, cfg["B"], cfg["N"], cfg["S"], args.steps, dtype)
        records.append({
            **base, **t.as_dict(),
            "flops": f.flops, "bytes": f.bytes, "h100_floor_ms": f.floor_s * 1e3,
            "ratio_to_flop_floor": t.median_ms / (f.flop_s * 1e3),
            "ratio_to_byte_floor": t.median_ms / (f.byte_s * 1e3),
            "achieved_tflops": f.flops / (t.median_ms * 1e-3) / 1e12,
        })  # fmt: skip
        with open(out / "score_partial.jsonl", "a") as fh:  # kept if a later case is cut off
            fh.write(json.dumps(records[-1]) + "\n")
    return records


def run_e2e(args: argparse.Namespace, meta: dict) -> list[dict]:
    from energy_rerank.server.testing import ServerProcess

    records = []
    concurrency = args.concurrency or ([1, 4, 16] if args.quick else [1, 2, 4, 8, 16, 32, 64])
    model_args = []
    if args.policy:
        model_args += ["--policy", str(args.policy)]
    if args.energy:
        model_args += ["--energy", str(args.energy)]
    model_args += ["--device", args.device]
    for batching, flags in e2e.BATCHING.items():
        # On CUDA the server captures every graph bucket before it listens: allow for it.
        with ServerProcess([*model_args, *flags], startup_timeout=600.0) as server:
            cases = list(itertools.product((1, 64), concurrency))
            for n, c in tqdm(cases, desc=f"e2e batching={batching}", unit="case"):
                samples, wall = e2e.run_load(server.address, c, args.e2e_requests, n, args.image_px)
                records.append({
                    "kind": "e2e", "batching": batching, "N": n, "concurrency": c,
                    "image_px": args.image_px, **e2e.summarize(samples, wall), **meta,
                })  # fmt: skip
                with open(args.out / "e2e_partial.jsonl", "a") as f:  # kept if a later case is cut off
                    f.write(json.dumps(records[-1]) + "\n")
    return records


def pair(text: str) -> tuple[int, int]:
    """'8x64' -> (8, 64)."""
    try:
        a, b = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected two integers like 8x64, got {text!r}") from None
    if a < 1 or b < 1:
        raise argparse.ArgumentTypeError(f"both sizes must be >= 1, got {text!r}")
    return a, b


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small CPU grid that finishes in a few minutes")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device (default: %(default)s)")
    p.add_argument("--out", type=Path, default=Path("bench/results"), help="output folder (default: %(default)s)")
    p.add_argument("--providers", nargs="*", choices=providers.PROVIDERS, help="scoring providers (default: all)")
    p.add_argument("--parts", nargs="*", choices=("score", "e2e"), default=["score", "e2e"], help="what to run")
    p.add_argument("--bn", nargs="*", type=pair, metavar="BxN", help="scoring shapes, e.g. 8x64 32x64 (default: by device)")
    p.add_argument("--sd", nargs="*", type=pair, metavar="SxD", help="context length x width, e.g. 300x4096 (default: by device)")
    p.add_argument("--dtypes", nargs="*", choices=tuple(DTYPES), help="scoring dtypes (default: by device)")
    p.add_argument("--steps", type=int, default=8, help="H, action steps per chunk (default: %(default)s)")
    p.add_argument("--calls", type=int, default=None, help="timed calls per case (default: 100 GPU, 20 CPU)")
    p.add_argument("--warmup", type=int, default=5, help="untimed calls per case (default: %(default)s)")
    p.add_argument("--seed-limit", type=float, default=4e9, help="skip the seed provider above B*N*S*D elements")
    p.add_argument("--policy", type=Path, help="policy bundle for e2e (default: the server's embedded default)")
    p.add_argument("--energy", type=Path, help="energy bundle for e2e (default: the server's embedded default)")
    p.add_argument("--e2e-requests", type=int, default=None, help="requests per client per case (default: 20, quick 8)")
    p.add_argument("--concurrency", type=int, nargs="*", help="e2e client counts (default: 1 4 16 quick, 1..64 full)")
    p.add_argument("--image-px", type=int, default=224, help="side of the JPEG camera images sent (default: %(default)s)")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if args.calls is None:
        args.calls = 100 if device.type == "cuda" else (10 if args.quick else 20)
    if args.e2e_requests is None:
        args.e2e_requests = 8 if args.quick else 20
    if args.quick and device.type == "cpu":
        torch.set_num_threads(max(1, torch.get_num_threads()))
    args.out.mkdir(parents=True, exist_ok=True)
    meta = report.machine(device)
    records: list[dict] = []
    if "score" in args.parts:
        records += run_scoring(args, device, args.out, meta)
    if "e2e" in args.parts:
        records += run_e2e(args, meta)
    paths = report.write(records, args.out)
    print(report.table(records))
    print("wrote " + ", ".join(str(p) for p in paths))
    with open(args.out / "command.json", "w") as f:
        json.dump({"argv": sys.argv}, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
