"""Whether Triton can run here, and how: compiled on CUDA, or the interpreter on CPU tensors.

Nothing here imports triton at module import time, so `import energy_rerank.kernels` works on a
machine with neither triton nor CUDA, and the scoring backends can ask whether the Triton one
fits. The kernel modules import triton themselves and are only imported by the Triton scorer.
"""

from __future__ import annotations

import importlib.util
import os

import torch

from energy_rerank.config import EnergyConfig


def triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


def interpreting() -> bool:
    """True when TRITON_INTERPRET=1: kernels then run in numpy on CPU tensors (tests, no GPU)."""
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def triton_usable(device: torch.device) -> bool:
    """Can the Triton backend run on tensors of this device?"""
    if not triton_installed():
        return False
    if device.type == "cuda":
        return not interpreting()
    return device.type == "cpu" and interpreting()


MAX_HIDDEN = 1024  # one row per program register tile in the readout; wider heads need a K loop


def unsupported_reason(config: EnergyConfig) -> str | None:
    """Why the fused kernels cannot score this architecture, or None when they can."""
    dh = config.hidden // config.heads
    if dh < 16 or dh & (dh - 1) or config.hidden > MAX_HIDDEN:
        return (
            f"the Triton backend supports hidden/heads a power of two >= 16 and hidden <= {MAX_HIDDEN}; "
            f"got hidden={config.hidden}, heads={config.heads}"
        )
    if config.action_residual:
        return "the Triton backend does not fuse action_residual yet"
    return None


FP32_PRECISIONS = ("tf32x3", "ieee")  # tl.dot on fp32 operands: see dot_precision
CHAIN_MODES = ("auto", "fused", "fused_cublas", "layered")  # TritonScorer plans: see triton_scorer.py


def dot_precision(storage: torch.dtype, fp32_precision: str = "tf32x3") -> str:
    """tl.dot's input_precision for this storage type.

    For fp32 operands: "tf32x3" (three TF32 tensor-core products: ~3e-7 relative error on the
    H100, the default) or "ieee" (no tensor cores). A single TF32 product per dot measured
    1.3-2.2e-2 on the H100, far over fp32's 1e-3, so it is not offered. bf16 operands ignore the
    value; they get one fixed one, so each kernel compiles (and autotunes) once per shape.
    """
    if fp32_precision not in FP32_PRECISIONS:
        raise ValueError(f"fp32_precision must be one of {FP32_PRECISIONS}, got {fp32_precision!r}")
    return fp32_precision if storage == torch.float32 else "tf32x3"


def dot_dtype(storage: torch.dtype):
    """The operand type for tl.dot.

    On the GPU: the storage type (bf16 operands on the tensor cores; fp32 operands as TF32 products).
    Under the interpreter bf16 arithmetic is not emulated correctly (triton 3.9: a bf16 dot or
    multiply returns garbage, while bf16 loads, stores and casts work), so operands are rounded
    to the storage type and multiplied in fp32, which is what the tensor cores compute anyway.
    """
    import triton.language as tl

    if interpreting():
        return tl.float32
    return {torch.float32: tl.float32, torch.bfloat16: tl.bfloat16, torch.float16: tl.float16}[storage]
