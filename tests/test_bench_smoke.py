"""The benchmarks on the CPU: bench/latency.py end to end (JSON lines, CSV and PNGs with the
documented fields), the floors and timing they use, and check_gpu's acceptance lines."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from energy_rerank.config import EnergyConfig
from energy_rerank.energy import EnergyModel
from energy_rerank.kernels.folded_weights import fold_energy_head, score_folded
from energy_rerank.scoring.inputs import random_inputs
from energy_rerank.scoring.torch_scorer import TorchScorer
from energy_rerank.server.testing import write_tiny_bundles

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))  # the bench's scripts import their siblings by name

import check_gpu  # noqa: E402
import timing  # noqa: E402


def test_bench_quick_writes_results(tmp_path: Path) -> None:
    policy, energy = write_tiny_bundles(tmp_path / "bundles")
    out = tmp_path / "out"
    cmd = [
        sys.executable, str(ROOT / "bench" / "latency.py"), "--quick", "--out", str(out),
        "--providers", "seed", "torch", "onnxruntime", "triton", "--calls", "2", "--warmup", "1",
        "--e2e-requests", "2", "--policy", str(policy), "--energy", str(energy), "--image-px", "64",
        "--concurrency", "1", "3",
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    score = [r for r in records if r["kind"] == "score"]
    e2e = [r for r in records if r["kind"] == "e2e"]
    timed = [r for r in score if "median_ms" in r]
    assert {r["provider"] for r in timed} == {"seed", "torch", "onnxruntime"}
    assert {r["provider"] for r in score if "skipped" in r} == {"triton"}  # no CUDA here
    # each timed case is also appended as it finishes, for a run cut off by a time limit
    partial = [json.loads(line) for line in (out / "score_partial.jsonl").read_text().splitlines()]
    assert partial == timed
    for r in timed:
        assert r["median_ms"] > 0 and r["flops"] > 0 and r["ratio_to_flop_floor"] > 1
        assert r["torch"] and r["device"] == "cpu" and r["host"]
    assert {(r["batching"], r["N"]) for r in e2e} == {("off", 1), ("off", 64), ("on", 1), ("on", 64)}
    for r in e2e:
        assert r["requests"] == 2 * r["concurrency"] and r["throughput_rps"] > 0
        assert r["client_p50_ms"] >= r["total_p50_ms"] > 0 and r["score_p50_ms"] >= 0
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(records) and "median_ms" in rows[0]
    for png in ("latency_vs_n.png", "throughput_vs_concurrency.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "provider" in proc.stdout and "batching" in proc.stdout  # the one-screen table


def test_bench_grid_flags_and_bad_shapes(tmp_path: Path) -> None:
    """--bn / --sd / --dtypes narrow the scoring grid; a malformed shape is named, nothing runs."""
    out = tmp_path / "out"
    base = [sys.executable, str(ROOT / "bench" / "latency.py"), "--quick", "--parts", "score", "--out", str(out)]
    bad = subprocess.run([*base, "--bn", "8y64"], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert bad.returncode == 2 and "expected two integers like 8x64, got '8y64'" in bad.stderr
    cmd = [*base, "--bn", "2x3", "--sd", "5x24", "--providers", "torch", "--calls", "2", "--warmup", "1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [(r["B"], r["N"], r["S"], r["D"], r["dtype"]) for r in records] == [(2, 3, 5, 24, "fp32")]


def tiny_model() -> EnergyModel:
    torch.manual_seed(0)
    return EnergyModel(EnergyConfig(context_dim=24, action_dim=7, chunk_len=8, hidden=32, heads=2)).eval()


def test_floors_count_the_folded_head_flops():
    """score_floors' FLOPs equal what torch's flop counter sees in the folded head."""
    from torch.utils.flop_counter import FlopCounterMode

    model = tiny_model()
    b, n, s, h = 2, 5, 13, 8
    head = fold_energy_head(model)
    hidden, valid, cand = random_inputs(b, n, s, 24, h, 7, torch.float32, torch.device("cpu"))
    with FlopCounterMode(display=False) as counter:
        score_folded(head, hidden, valid, cand)
    floors = timing.score_floors(model.config, b, n, s, h, torch.float32)
    assert floors.flops == pytest.approx(counter.get_total_flops(), rel=1e-6)
    seed = timing.score_floors(EnergyConfig(), 8, 64, 300, 8, torch.bfloat16)
    assert 20e9 < seed.flops < 40e9 and seed.flop_s > seed.byte_s  # seed head at 8 x 64: ~29 GFLOP, ~29 MB


def test_time_scorer_on_cpu():
    t = timing.time_scorer(TorchScorer(tiny_model()), 2, 4, 5, 24, torch.float32, device="cpu", calls=5, warmup=1)
    assert 0 < t.p10_ms <= t.median_ms <= t.p90_ms


def test_acceptance_lines_from_partial_and_full_runs():
    """check_gpu judges the acceptance lines from the rows it has: a run cut short by its time
    limit reports the missing lines as not measured (None), never as passed."""

    def row(dtype, b, n, ms, speedup=1.0, err=1e-4, precision="-"):
        return {"dtype": dtype, "B": b, "N": n, "fp32_precision": precision, "triton_ms": ms, "speedup": speedup,
                "max_rel_err_vs_fp32": err}  # fmt: skip

    partial = dict(check_gpu.acceptance([row("bfloat16", 8, 64, 0.09)]))
    assert partial["bf16 B=8 N=64 <= 0.10 ms"] is True
    assert partial["bf16 B=32 N=64 >= 5x eager"] is None and partial["fp32 energies within 1e-3"] is None
    assert dict(check_gpu.acceptance([]))["bf16 energies within 2e-2 of fp32"] is None
    full = dict(check_gpu.acceptance([
        row("bfloat16", 8, 64, 0.12), row("bfloat16", 32, 64, 0.2, speedup=5.5, err=3e-2),
        row("float32", 8, 64, 0.24, precision="tf32x3", err=2e-3),
    ]))  # fmt: skip
    assert full == {
        "bf16 B=8 N=64 <= 0.10 ms": False, "bf16 B=32 N=64 >= 5x eager": True,
        "fp32 (tf32x3) B=8 N=64 <= 0.25 ms": True,
        "bf16 energies within 2e-2 of fp32": False, "fp32 energies within 1e-3": False,
    }  # fmt: skip
    assert {(str(dtype), precision) for dtype, _, _, precision in check_gpu.CASES} == {
        ("torch.bfloat16", "-"), ("torch.float32", "tf32x3"),
    }  # every fp32 case times the served default


def test_check_gpu_help_names_its_invocation():
    run = subprocess.run([sys.executable, str(ROOT / "bench" / "check_gpu.py"), "--help"], capture_output=True,
                         text=True, timeout=120, cwd=ROOT)  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    assert "python bench/check_gpu.py" in run.stdout and "--skip-tests" in run.stdout
