"""torchrun with two CPU processes (gloo) runs the debug preset; the replicas end identical."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from energy_rerank.energy import EnergyModel
from energy_rerank.training.config import preset


def test_torchrun_two_ranks_debug_preset(tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        "-m", "energy_rerank.cli", "train", "--debug", "--out", str(out), "--steps", "12",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    print("ddp summary:", {k: summary[k] for k in ("world_size", "steps", "applied_steps", "replicas_max_abs_diff")})
    assert summary["world_size"] == 2
    assert summary["applied_steps"] == 12 and summary["skipped_steps"] == 0
    # Measured across the two processes after the last step (broadcast + all-reduce of max |diff|).
    assert summary["replicas_max_abs_diff"] == 0.0
    trained = EnergyModel.from_pretrained(out)
    torch.manual_seed(preset("debug").seed)
    init = EnergyModel(preset("debug").energy)
    assert any(not torch.equal(a, b) for a, b in zip(trained.state_dict().values(), init.state_dict().values(), strict=True))
    assert proc.stdout.count("done: 12 steps") == 1  # only rank 0 reports (and writes)
