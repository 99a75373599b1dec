"""Make the Triton interpreter's tf32 dots see tf32 operands, as the H100's tensor cores do.

The interpreter computes `tl.dot(..., input_precision="tf32")` on fp32 operands exactly in fp32,
so on the CPU a single-tf32 kernel looks as accurate as tf32x3 and a tf32 tolerance test cannot
fail. Hopper's `wgmma` with .tf32 operands "will truncate lower 13 bits of the 32-bit input data
before multiplication is issued" (PTX ISA): every operand loses up to 2^-10 of its magnitude,
always toward zero. `hopper_tf32()` patches the interpreter to do the same (or to round to
nearest, `mode="round"`); tf32x3, ieee and bf16 dots are untouched.

    with hopper_tf32():
        energies = TritonScorer(model, fp32_precision="tf32").score(hidden, valid, candidates)

Interpreter only (TRITON_INTERPRET=1, CPU tensors): compiled kernels run on real tensor cores.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from energy_rerank.kernels.triton_support import to_tf32


@contextlib.contextmanager
def hopper_tf32(mode: str = "truncate") -> Iterator[None]:
    """Within the block, interpreted tf32 dots multiply tf32 operands (see the module docstring)."""
    from triton._C.libtriton import ir
    from triton.runtime import interpreter

    to_tf32(torch.zeros(1), mode)  # names a bad mode here, not inside a kernel
    builder = interpreter.InterpreterBuilder
    exact = builder.create_dot

    def operand(h):  # type: ignore[no-untyped-def]
        return interpreter.TensorHandle(to_tf32(torch.from_numpy(h.data), mode).numpy(), h.dtype.scalar)

    def create_dot(self, a, b, d, input_precision, max_num_imprecise_acc):  # type: ignore[no-untyped-def]
        if input_precision == ir.INPUT_PRECISION.TF32:
            a, b = operand(a), operand(b)
        return exact(self, a, b, d, input_precision, max_num_imprecise_acc)

    builder.create_dot = create_dot  # type: ignore[method-assign]
    try:
        yield
    finally:
        builder.create_dot = exact  # type: ignore[method-assign]
