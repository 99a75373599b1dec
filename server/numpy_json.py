"""The `json-numpy` encoding OpenVLA-OFT's deploy server and clients use: JSON in which a numpy
array is an object `{"__numpy__": <base64 of the raw bytes>, "dtype": "<f4", "shape": [..]}`
(a scalar has shape []). `dumps` writes what `json_numpy.dumps` writes for arrays and JSON
values; the server does not depend on the json-numpy package.

Decoding is for bodies from untrusted clients: arrays are checked by `wire_arrays` (plain
dtypes only, a shape that accounts for exactly the bytes sent) and anything that is not JSON is
an `InvalidInput` naming the body.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

import numpy as np

from energy_rerank.server.errors import InvalidInput, clip
from energy_rerank.server.wire_arrays import array_from_wire

ARRAY_KEY = "__numpy__"


def _encode(obj: Any) -> Any:
    if isinstance(obj, (np.ndarray, np.generic)):
        if obj.dtype.kind in ("V", "O", "c"):
            raise TypeError(f"cannot send numpy dtype {obj.dtype}")
        a = np.ascontiguousarray(obj)
        return {ARRAY_KEY: base64.b64encode(a.tobytes()).decode(), "dtype": a.dtype.str, "shape": list(a.shape)}
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


def dumps(obj: Any) -> str:
    """JSON with numpy arrays as json-numpy objects (what OFT's server answers)."""
    return json.dumps(obj, default=_encode, allow_nan=False)


def _decode(obj: dict[str, Any]) -> Any:
    if ARRAY_KEY not in obj:
        return obj
    text = obj[ARRAY_KEY]
    if not isinstance(text, str):
        raise InvalidInput("body", f"{ARRAY_KEY} must be a base64 string, got {type(text).__name__}")
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput("body", f"{ARRAY_KEY} is not valid base64") from None
    a = array_from_wire(obj.get("dtype"), obj.get("shape"), data, "body")
    return a[()] if a.ndim == 0 else a  # json-numpy's scalars have shape []


def loads(text: str | bytes) -> Any:
    """A request body -> Python values with numpy arrays."""
    try:
        return json.loads(text, object_hook=_decode)
    except InvalidInput:
        raise
    except (ValueError, RecursionError, TypeError) as e:  # JSONDecodeError, bad UTF-8, nesting
        raise InvalidInput("body", f"not JSON ({type(e).__name__}: {clip(str(e), 120)})") from None
