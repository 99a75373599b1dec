"""Arrays that arrive as (dtype string, shape, raw bytes): openpi's msgpack frames and OFT's
JSON-numpy bodies both carry numpy arrays this way, and both come from clients the server does
not trust. This is the one rule for turning such a triple into an array.

Only plain numeric and bool dtypes are accepted (never object, void or structured dtypes, so no
bytes are ever interpreted as Python objects); the declared shape must account for exactly the
bytes sent, so a frame cannot declare a huge array and make the server allocate it: an array is a
read-only view of bytes already received, never a new allocation sized by the sender.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from energy_rerank.server.errors import InvalidInput, quote

# numpy dtype strings (`dtype.str`, what openpi and json-numpy send) that may arrive.
ACCEPTED_DTYPES = frozenset(
    {"|b1", "|u1", "|i1", "<u2", "<i2", "<u4", "<i4", "<u8", "<i8", "<f2", "<f4", "<f8"}
)
MAX_NDIM = 8  # deepest array accepted (images are 3-D; nothing a robot sends is deeper)


def array_from_wire(dtype: Any, shape: Any, data: Any, field: str) -> np.ndarray:
    """-> a read-only array viewing `data`; InvalidInput naming `field` when the triple is not one."""
    if not isinstance(dtype, str) or dtype not in ACCEPTED_DTYPES:
        raise InvalidInput(field, f"array dtype {quote(dtype)} is not one of {sorted(ACCEPTED_DTYPES)}")
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise InvalidInput(field, f"array data must be bytes, got {type(data).__name__}")
    if (
        not isinstance(shape, (list, tuple))
        or len(shape) > MAX_NDIM
        or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
    ):
        raise InvalidInput(field, f"array shape {quote(shape)} must be at most {MAX_NDIM} sizes >= 0")
    dt = np.dtype(dtype)
    need = math.prod(shape) * dt.itemsize  # Python ints: a declared 2**60 elements cannot overflow
    if len(data) != need:
        raise InvalidInput(field, f"array of shape {quote(tuple(shape))} {dtype} needs {need} bytes, got {len(data)}")
    return np.frombuffer(data, dtype=dt).reshape(tuple(shape))


def scalar_from_wire(dtype: Any, value: Any, field: str) -> np.generic:
    """A numpy scalar sent as (dtype string, Python number)."""
    if not isinstance(dtype, str) or dtype not in ACCEPTED_DTYPES:
        raise InvalidInput(field, f"scalar dtype {quote(dtype)} is not one of {sorted(ACCEPTED_DTYPES)}")
    if not isinstance(value, (bool, int, float)):
        raise InvalidInput(field, f"scalar value must be a number, got {type(value).__name__}")
    try:
        return np.dtype(dtype).type(value)
    except (OverflowError, ValueError) as e:
        raise InvalidInput(field, f"{quote(value)} does not fit {dtype}: {e}") from None
