"""Benchmark output: machine metadata, JSON lines, CSV, PNG plots and a one-screen table."""

from __future__ import annotations

import csv
import json
import platform
import socket
from pathlib import Path

import torch


def machine(device: torch.device) -> dict:
    """What every record carries: machine, device and versions."""
    meta = {
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "cpu": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(),
    }
    for pkg in ("triton", "onnxruntime", "grpc"):
        try:
            meta[pkg] = __import__(pkg).__version__
        except ImportError:
            meta[pkg] = None
    return meta


def write(records: list[dict], out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    jsonl, csv_path = out / "results.jsonl", out / "results.csv"
    with open(jsonl, "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    keys: list[str] = []
    for r in records:
        keys += [k for k in r if k not in keys]
    with open(csv_path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(records)
    return [jsonl, csv_path, *plots(records, out)]


def plots(records: list[dict], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    score = [r for r in records if r["kind"] == "score" and "median_ms" in r]
    if score:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        b0 = min(r["B"] for r in score)
        for (prov, s, d, dt), rows in _group(score, ("provider", "S", "D", "dtype")).items():
            rows = sorted((r for r in rows if r["B"] == b0), key=lambda r: r["N"])
            if len(rows) > 1:
                ax.plot([r["N"] for r in rows], [r["median_ms"] for r in rows], marker="o",
                        label=f"{prov} S={s} D={d} {dt}")  # fmt: skip
        ax.set(xscale="log", yscale="log", xlabel="candidates N", ylabel="median ms per scoring call",
               title=f"Scoring latency vs N (B={b0}, {score[0]['device_name']})")  # fmt: skip
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        paths.append(out / "latency_vs_n.png")
        fig.savefig(paths[-1], dpi=120)
        plt.close(fig)
    e2e = [r for r in records if r["kind"] == "e2e"]
    if e2e:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
        for (batching, n), rows in _group(e2e, ("batching", "N")).items():
            rows = sorted(rows, key=lambda r: r["concurrency"])
            xs = [r["concurrency"] for r in rows]
            axes[0].plot(xs, [r["throughput_rps"] for r in rows], marker="o", label=f"N={n} batching {batching}")
            axes[1].plot(xs, [r["client_p50_ms"] for r in rows], marker="o", label=f"N={n} batching {batching}")
        axes[0].set(xscale="log", xlabel="concurrent clients", ylabel="requests / s", title="Throughput")
        axes[1].set(xscale="log", yscale="log", xlabel="concurrent clients", ylabel="client p50 ms",
                    title="Latency")  # fmt: skip
        for ax in axes:
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=8)
        fig.tight_layout()
        paths.append(out / "throughput_vs_concurrency.png")
        fig.savefig(paths[-1], dpi=120)
        plt.close(fig)
    return paths


def table(records: list[dict]) -> str:
    lines = []
    score = [r for r in records if r["kind"] == "score"]
    if score:
        lines.append(f"{'provider':<14}{'dtype':<6}{'B':>4}{'N':>6}{'S':>5}{'D':>6}{'median ms':>11}{'TFLOP/s':>9}{'x H100 floor':>13}")
        for r in score:
            if "median_ms" in r:
                ratio = r["median_ms"] / r["h100_floor_ms"]
                lines.append(f"{r['provider']:<14}{r['dtype']:<6}{r['B']:>4}{r['N']:>6}{r['S']:>5}{r['D']:>6}"
                             f"{r['median_ms']:>11.3f}{r['achieved_tflops']:>9.3f}{ratio:>13.0f}")  # fmt: skip
        skipped = {(r["provider"], r["skipped"]) for r in score if "skipped" in r}
        lines += [f"  skipped {p}: {why}" for p, why in sorted(skipped)]
    e2e = [r for r in records if r["kind"] == "e2e"]
    if e2e:
        lines.append(f"\n{'batching':<9}{'N':>4}{'conc':>6}{'rps':>8}{'client p50':>12}{'p99':>9}"
                     f"{'server p50':>12}{'overhead p50':>14}{'batch':>7}")  # fmt: skip
        for r in e2e:
            lines.append(f"{r['batching']:<9}{r['N']:>4}{r['concurrency']:>6}{r['throughput_rps']:>8.1f}"
                         f"{r['client_p50_ms']:>12.2f}{r['client_p99_ms']:>9.2f}{r['total_p50_ms']:>12.2f}"
                         f"{r['overhead_p50_ms']:>14.2f}{r['mean_batch']:>7.1f}")  # fmt: skip
    return "\n".join(lines)


def _group(rows: list[dict], keys: tuple[str, ...]) -> dict[tuple, list[dict]]:
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault(tuple(r[k] for k in keys), []).append(r)
    return groups
