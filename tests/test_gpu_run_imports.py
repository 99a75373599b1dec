"""What a GPU run needs imports without the server-only extras.

The GPU machine's image has torch, triton, pytest, grpcio and prometheus-client but not
grpcio-health-checking or grpcio-reflection (the device README). `bench/gpu_acceptance.sh`
runs check_gpu (which runs the kernel tests and every GPU-marked test file), the scoring bench
and the kernel profile there; none of them may need those two packages, or the run dies at
import time after minutes of machine start-up.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

PROBE = r"""
import importlib, importlib.abc, sys

class Missing(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("grpc_health", "grpc_reflection"):
            raise ModuleNotFoundError(f"No module named {{name!r}} (blocked: not on the GPU image)")

sys.meta_path.insert(0, Missing())
sys.path[:0] = [{tests!r}, {bench!r}]
import check_gpu  # the GPU acceptance run (bench/check_gpu.py)
for path in check_gpu.gpu_test_files(__import__("pathlib").Path({repo!r})):
    importlib.import_module(path.stem)
import latency, profile_kernels  # the bench's score part and the profile
print("imported", sorted(m for m in sys.modules if m.startswith("test_")))
"""


def test_gpu_run_imports_without_health_and_reflection() -> None:
    code = PROBE.format(tests=str(REPO / "tests"), bench=str(REPO / "bench"), repo=str(REPO))
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "test_server_warm_up" in run.stdout and "test_kernels_triton" in run.stdout, run.stdout
