"""openpi's wire encoding: msgpack with numpy arrays as maps of bytes keys.

An array travels as `{b"__ndarray__": True, b"data": <raw bytes>, b"dtype": "<f4", b"shape": [..]}`
and a numpy scalar as `{b"__npgeneric__": True, b"data": <number>, b"dtype": "<f4"}`, exactly as
`openpi_client.msgpack_numpy` packs them, so `packb` here produces the same bytes as openpi's
`Packer` for the same object (a test checks it against recorded openpi frames). The server
does not import openpi-client (it pins numpy < 2).

Decoding is for frames from untrusted clients: arrays are checked by `wire_arrays` (plain dtypes
only, a shape that accounts for exactly the bytes sent), maps and lists are capped in length, and
anything msgpack cannot parse is an `InvalidInput` naming the frame, never an exception of
msgpack's own escaping to the connection.
"""

from __future__ import annotations

from typing import Any

import msgpack
import numpy as np

from energy_rerank.server.errors import InvalidInput, clip
from energy_rerank.server.wire_arrays import array_from_wire, scalar_from_wire

ARRAY_KEY, SCALAR_KEY = b"__ndarray__", b"__npgeneric__"
MAX_ITEMS = 4096  # longest map or list in a frame (an observation has a handful of keys)


def _pack(obj: Any) -> Any:
    """msgpack's `default` for numpy values; anything else it cannot pack is its TypeError."""
    if isinstance(obj, (np.ndarray, np.generic)) and obj.dtype.kind in ("V", "O", "c"):
        raise ValueError(f"cannot send numpy dtype {obj.dtype}")
    if isinstance(obj, np.ndarray):
        return {ARRAY_KEY: True, b"data": obj.tobytes(), b"dtype": obj.dtype.str, b"shape": obj.shape}
    if isinstance(obj, np.generic):
        return {SCALAR_KEY: True, b"data": obj.item(), b"dtype": obj.dtype.str}
    raise TypeError(f"cannot send {type(obj).__name__}")


def packb(obj: Any) -> bytes:
    """One frame, byte for byte what openpi's `msgpack_numpy.packb` makes of `obj`."""
    return msgpack.packb(obj, default=_pack)


def _unpack(obj: dict) -> Any:
    if ARRAY_KEY in obj:
        return array_from_wire(obj.get(b"dtype"), obj.get(b"shape"), obj.get(b"data"), "frame")
    if SCALAR_KEY in obj:
        return scalar_from_wire(obj.get(b"dtype"), obj.get(b"data"), "frame")
    return obj


def unpackb(frame: bytes) -> Any:
    """A frame from a client -> Python values with numpy arrays (read-only views of the frame)."""
    try:
        return msgpack.unpackb(
            frame,
            object_hook=_unpack,
            raw=False,  # msgpack str -> str, bin -> bytes, as openpi unpacks
            strict_map_key=True,  # keys are str or bytes: no unhashable or costly-to-hash keys
            max_map_len=MAX_ITEMS,
            max_array_len=MAX_ITEMS,
        )
    except InvalidInput:
        raise
    except Exception as e:  # msgpack's ExtraData, FormatError, StackError, ValueError ...
        raise InvalidInput("frame", f"not a msgpack frame ({type(e).__name__}: {clip(str(e), 120)})") from None
