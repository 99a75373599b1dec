"""Kernel inputs read through a device-held address, so a CUDA graph can read a new tensor at
each replay without copying it into the buffer it was captured with.

A captured launch bakes in its pointer arguments. A launch that instead loads its input's base
address from a one-int64 device tensor reads whatever tensor that int names when it runs: the
graph's owner (cuda_graphs.GraphedScorer) writes the caller's address there before the replay,
one 8-byte copy instead of copying the tensor (19.6 MB of hidden states at B = 8, 18 us on the
H100). The data at the address must be laid out like the tensor the launch was given.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def addressed(x_ptr, address_ptr, BY_ADDRESS: tl.constexpr, ALIGN: tl.constexpr = 16):
    """x_ptr, or with BY_ADDRESS the pointer stored in address_ptr[0] (int64), typed like x_ptr: a
    launch captured once in a CUDA graph then reads whichever tensor the address names at replay,
    so the graph's caller need not copy its input into a static buffer (cuda_graphs.py). ALIGN:
    the byte alignment the caller guarantees (16 keeps wide inputs' loads vectorised, as a
    direct pointer argument would; 1 for inputs whose rows are not aligned anyway)."""
    base = x_ptr
    if BY_ADDRESS:
        base = tl.load(address_ptr).to(tl.pointer_type(x_ptr.dtype.element_ty))
        if ALIGN > 1:
            base = tl.multiple_of(base, ALIGN)
    return base


def check_address(address: torch.Tensor | None, x: torch.Tensor) -> None:
    """An input address is one int64 on x's device (the data it names must be laid out like x)."""
    if address is not None and (address.shape != (1,) or address.dtype != torch.int64 or address.device != x.device):
        raise ValueError(f"an input address is a [1] int64 tensor on {x.device}, got {address.dtype} {tuple(address.shape)}")
