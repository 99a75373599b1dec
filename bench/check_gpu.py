"""GPU acceptance run for the Triton scorer: kernel tests on CUDA, ceilings, latency table.

    python bench/check_gpu.py [--out DIR] [--calls 200] [--skip-tests]

1. runs tests/test_kernels_*.py compiled on the GPU (TRITON_INTERPRET removed from the env), and
   every test file holding a GPU-only test;
2. measures the ceilings: device-to-device copy, and bf16 and fp32 (as TF32) matrix products;
3. times the seed architecture (D_h 4096, S 300, H 8, A 7, hidden 512, 8 heads) for the triton
   backend (autotuned, CUDA graphs) against the shared-context eager torch scorer, checks the
   triton energies against the fp32 torch reference on the same inputs, and prints the
   acceptance lines (latency and accuracy targets) with the ratio to the FLOP and byte floors,
   and which plan (fused chains or one launch per layer) the CUDA-graph capture kept, with every
   plan's replay time. Each row is printed and check_gpu.json (in --out) rewritten as soon as it
   is measured, so a run stopped by its time limit keeps its rows ("complete": false; unmeasured
   lines read "not measured").
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from timing import score_floors, time_scorer  # noqa: E402

from energy_rerank.config import EnergyConfig  # noqa: E402
from energy_rerank.energy import EnergyModel  # noqa: E402
from energy_rerank.scoring.backends import make_scorer  # noqa: E402
from energy_rerank.scoring.inputs import random_inputs  # noqa: E402
from energy_rerank.scoring.torch_scorer import TorchScorer  # noqa: E402

REPO = Path(__file__).resolve().parents[1]  # the checkout whose tests run on the GPU

SEED_S, SEED_H, SEED_A = 300, 8, 7
CASES = (  # (dtype, B, N, fp32 dot precision)
    (torch.bfloat16, 1, 64, "-"),
    (torch.bfloat16, 8, 64, "-"),
    (torch.bfloat16, 32, 64, "-"),
    (torch.bfloat16, 8, 256, "-"),
    (torch.float32, 8, 64, "tf32x3"),
    (torch.float32, 32, 64, "tf32x3"),
)


def gpu_test_files(repo: Path) -> list[Path]:
    """The kernel test files (interpreted on a CPU, compiled here) and every file with a GPU-only
    test (skipped everywhere else, so this is where they run at all)."""
    files = sorted((repo / "tests").glob("test_*.py"))
    return [p for p in files if p.name.startswith("test_kernels_") or "pytest.mark.gpu" in p.read_text()]


def run_tests(repo: Path) -> int:
    tests = [str(p) for p in gpu_test_files(repo)]
    if not tests:
        print(f"no tests/test_kernels_*.py under {repo}; skipping the test step")
        return 0
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests]
    if importlib.util.find_spec("xdist"):  # compiling the kernel variants dominates: spread it
        cmd += ["-n", str(min(8, os.cpu_count() or 1))]
    print("$", " ".join(cmd), flush=True)
    return subprocess.call(cmd, cwd=repo, env=env)


def measure_ceilings() -> dict[str, float]:
    """Achievable HBM bandwidth (bytes read + written per s) and bf16 / fp32 (as TF32) matrix rates:
    the rates the fp32 floors use, since tf32x3 dots are TF32 tensor-core products."""
    from triton.testing import do_bench

    x = torch.empty(1 << 28, dtype=torch.float32, device="cuda")  # 1 GiB
    y = torch.empty_like(x)
    ms = do_bench(lambda: y.copy_(x), return_mode="median")
    out = {"bytes_per_s": 2 * x.numel() * 4 / (ms * 1e-3)}
    n = 8192
    for name, dtype in (("bf16_flops", torch.bfloat16), ("tf32_flops", torch.float32)):
        a = torch.randn(n, n, device="cuda", dtype=dtype)
        b = torch.randn(n, n, device="cuda", dtype=dtype)
        torch.set_float32_matmul_precision("high")  # fp32 matmuls on the tensor cores
        ms = do_bench(lambda a=a, b=b: a @ b, return_mode="median")
        out[name] = 2 * n**3 / (ms * 1e-3)
    torch.set_float32_matmul_precision("highest")
    return out


def max_rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float(((out.float() - ref).abs() / ref.abs().clamp_min(1e-6)).max())


def bench(calls: int, ceilings: dict[str, float], on_row: Callable[[list[dict]], None] | None = None) -> list[dict]:
    """One row per CASES entry; `on_row(rows so far)` after each, so a run cut off by a time
    limit still leaves what it measured."""
    torch.manual_seed(0)
    cfg = EnergyConfig()
    base = EnergyModel(cfg).cuda().eval()
    rows = []
    for dtype, b, n, precision in CASES:
        model = copy.deepcopy(base).to(dtype)
        options = {"fp32_precision": precision} if dtype == torch.float32 else {}
        triton_scorer = make_scorer(model, "triton", **options)  # autotuned, CUDA graphs
        eager = TorchScorer(model)
        hidden, valid, cand = random_inputs(b, n, SEED_S, cfg.context_dim, SEED_H, SEED_A, dtype, torch.device("cuda"))
        with torch.inference_mode():
            ref = base.score(base.encode_context(hidden.float(), valid), cand)
        err = max_rel_err(triton_scorer.score(hidden, valid, cand), ref)
        t_triton, t_eager = (
            time_scorer(scorer, b, n, SEED_S, cfg.context_dim, dtype, h=SEED_H, a=SEED_A, calls=calls)
            for scorer in (triton_scorer, eager)
        )
        # the plans' replay times measured when the bucket was captured (cuda_graphs.py)
        plans: dict[str, float] = next(iter(getattr(triton_scorer.impl, "plan_times", {}).values()), {})
        graphs = getattr(triton_scorer.impl, "graphs", {})
        chosen = next((g.plan for g in graphs.values()), None)
        rate = ceilings["tf32_flops"] if dtype == torch.float32 else ceilings["bf16_flops"]
        floors = score_floors(cfg, b, n, SEED_S, SEED_H, dtype, flop_rate=rate, byte_rate=ceilings["bytes_per_s"])
        rows.append(
            {
                "dtype": str(dtype).removeprefix("torch."),
                "fp32_precision": precision,
                "B": b,
                "N": n,
                "triton_ms": t_triton.median_ms,
                "triton_p90_ms": t_triton.p90_ms,
                "eager_ms": t_eager.median_ms,
                "speedup": t_eager.median_ms / t_triton.median_ms,
                "plan": chosen,
                "fused_replay_ms": plans.get("fused"),
                "fused_cublas_replay_ms": plans.get("fused_cublas"),
                "layered_replay_ms": plans.get("layered"),
                "max_rel_err_vs_fp32": err,
                "gflop": floors.flops / 1e9,
                "mbytes": floors.bytes / 1e6,
                "flop_floor_ms": floors.flop_s * 1e3,
                "byte_floor_ms": floors.byte_s * 1e3,
                "x_floor": t_triton.median_ms / (floors.floor_s * 1e3),
            }
        )
        del triton_scorer, eager, model
        torch.cuda.empty_cache()
        if on_row is not None:
            on_row(rows)
    return rows


def acceptance(rows: list[dict]) -> list[tuple[str, bool | None]]:
    """The acceptance lines; None for a line whose row was not measured (a run cut short)."""

    def row(dtype: str, b: int, n: int, precision: str = "-") -> dict | None:
        key = (dtype, b, n, precision)
        return next((r for r in rows if (r["dtype"], r["B"], r["N"], r["fp32_precision"]) == key), None)

    def line(r: dict | None, ok: Callable[[dict], bool]) -> bool | None:
        return None if r is None else ok(r)

    bf16 = [r for r in rows if r["dtype"] == "bfloat16"]
    fp32 = [r for r in rows if r["dtype"] == "float32"]
    return [
        ("bf16 B=8 N=64 <= 0.10 ms", line(row("bfloat16", 8, 64), lambda r: r["triton_ms"] <= 0.10)),
        ("bf16 B=32 N=64 >= 5x eager", line(row("bfloat16", 32, 64), lambda r: r["speedup"] >= 5.0)),
        ("fp32 (tf32x3) B=8 N=64 <= 0.25 ms", line(row("float32", 8, 64, "tf32x3"), lambda r: r["triton_ms"] <= 0.25)),
        ("bf16 energies within 2e-2 of fp32", all(r["max_rel_err_vs_fp32"] <= 2e-2 for r in bf16) if bf16 else None),
        ("fp32 energies within 1e-3", all(r["max_rel_err_vs_fp32"] <= 1e-3 for r in fp32) if fp32 else None),
    ]


def print_row(r: dict) -> None:
    print(f"{r['dtype']:9} {r['fp32_precision']:>8} {r['B']:>3} {r['N']:>4} {r['triton_ms']:>10.4f} {r['eager_ms']:>9.4f} "
          f"{r['speedup']:>8.1f} {r['x_floor']:>8.2f} {r['gflop']:>6.1f} {r['mbytes']:>6.1f} "
          f"{r['max_rel_err_vs_fp32']:>8.1e} {r['plan'] or '-':>12} {_ms(r['fused_replay_ms']):>7} "
          f"{_ms(r['fused_cublas_replay_ms']):>7} {_ms(r['layered_replay_ms']):>7}", flush=True)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python bench/check_gpu.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", ".")), help="where check_gpu.json goes")
    parser.add_argument("--calls", type=int, default=200, help="timed calls per case (median reported)")
    parser.add_argument("--skip-tests", action="store_true", help="only measure")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("check_gpu needs a CUDA device")
        return 2
    print(f"device: {torch.cuda.get_device_name()}  torch {torch.__version__}", flush=True)
    tests_rc = 0 if args.skip_tests else run_tests(REPO)
    ceilings = measure_ceilings()
    print(
        f"ceilings: copy {ceilings['bytes_per_s'] / 1e12:.2f} TB/s, bf16 {ceilings['bf16_flops'] / 1e12:.0f} "
        f"TFLOP/s, fp32 as TF32 {ceilings['tf32_flops'] / 1e12:.0f} TFLOP/s"
    )
    args.out.mkdir(parents=True, exist_ok=True)

    def save(rows: list[dict], complete: bool) -> list[tuple[str, bool | None]]:
        checks = acceptance(rows)
        report = {"device": torch.cuda.get_device_name(), "tests_rc": tests_rc, "ceilings": ceilings, "rows": rows,
                  "acceptance": dict(checks), "complete": complete}  # fmt: skip
        (args.out / "check_gpu.json").write_text(json.dumps(report, indent=2))
        return checks

    print(f"\n{'dtype':9} {'fp32 dot':>8} {'B':>3} {'N':>4} {'triton ms':>10} {'eager ms':>9} {'speedup':>8} {'x floor':>8} "
          f"{'GFLOP':>6} {'MB':>6} {'rel err':>8} {'plan':>12} {'fused':>7} {'cublas':>7} {'layered':>7}", flush=True)
    def measured(so_far: list[dict]) -> None:  # printed and saved at once: a run cut off by its time limit keeps them
        print_row(so_far[-1])
        save(so_far, complete=False)

    rows = bench(args.calls, ceilings, on_row=measured)
    checks = save(rows, complete=True)
    print(f"kernel tests on GPU: {'passed' if tests_rc == 0 else f'FAILED (rc {tests_rc})'}")
    for name, ok in checks:
        print(f"{'not measured' if ok is None else 'PASS' if ok else 'FAIL'}  {name}")
    return int(tests_rc != 0 or not all(ok for _, ok in checks))


if __name__ == "__main__":
    sys.exit(main())
