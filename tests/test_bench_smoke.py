"""bench/latency.py end to end on the CPU: writes JSON lines, CSV and PNGs with the documented fields."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

from energy_rerank.server.testing import write_tiny_bundles

ROOT = Path(__file__).resolve().parents[1]


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
