"""Dict observations (openpi frames, OFT bodies) -> the SelectActionRequest gRPC would receive.

openpi and OpenVLA-OFT clients send one flat dict per observation: images as uint8 arrays,
proprio as a float vector (often float64), the instruction as text. `ObservationKeys` says under
which key each input of the served policy is found; `to_request` builds the protobuf request
from them (images as RAW pixels, vectors as float32), so every check after that is gRPC's own
(`codec`, `images`: shapes, finiteness, pixel budgets), and `client_error` renames the fields in
those errors back to the client's keys. Keys the policy does not read are ignored, as openpi's
own server ignores what its transforms do not pick.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from energy_rerank.config import config_from_dict, config_to_dict
from energy_rerank.policy.base import PolicyDescription
from energy_rerank.server._proto import rerank_pb2 as pb
from energy_rerank.server.errors import InvalidInput, quote

CAMERA_FIELD = "observation.images"  # where codec/images name a camera: observation.images['name']


@dataclass(frozen=True)
class ObservationKeys:
    """Where a dict observation keeps each input of the served policy. Defaults: openpi's LIBERO
    example client (`examples/libero/main.py`)."""

    # key of the policy's 1st, 2nd, ... camera, in the order GetModelInfo lists its cameras;
    # images are uint8 [h, w, 3] or [3, h, w], any size (the policy resizes them)
    cameras: tuple[str, ...] = ("observation/image", "observation/wrist_image")
    state: str = "observation/state"  # proprio vector -> the policy's `state` (read when state_dim > 0)
    lowdim: str = "observation/lowdim"  # low-dim scene vector -> `lowdim` (read when lowdim_dim > 0)
    instruction: str = "prompt"  # the language instruction (text)
    # optional, per request; stock clients never send them, so the server's defaults apply
    num_candidates: str = "rerank/num_candidates"  # N, an integer in [1, max_candidates]
    seed: str = "rerank/seed"  # an integer >= 0 that fixes the candidates
    switch_margin: str = "rerank/switch_margin"  # a float >= 0 (inf = never leave the policy's chunk)

    def __post_init__(self) -> None:
        keys = [*self.cameras, self.state, self.lowdim, self.instruction, self.num_candidates, self.seed,
                self.switch_margin]  # fmt: skip
        if not all(isinstance(k, str) and k for k in keys) or len(set(self.cameras)) != len(self.cameras):
            raise ValueError(f"observation keys must be non-empty strings, one per camera, got {keys}")

    def to_json(self) -> str:
        return json.dumps(config_to_dict(self))

    @classmethod
    def from_json(cls, text: str) -> ObservationKeys:
        """A JSON object of the fields to change (the others keep their defaults); unknown ones are refused."""
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError(f"observation keys must be a JSON object, got {quote(data)}")
        return config_from_dict(cls, data)


def to_request(obs: Any, keys: ObservationKeys, desc: PolicyDescription) -> pb.SelectActionRequest:
    """A client's dict observation -> SelectActionRequest; InvalidInput names the client's key."""
    if not isinstance(obs, Mapping):
        raise InvalidInput("observation", f"must be a map of key -> value, got {type(obs).__name__}")
    o = pb.Observation(instruction=_text(obs.get(keys.instruction, ""), keys.instruction))
    for i, camera in enumerate(desc.cameras):
        if i >= len(keys.cameras):
            raise InvalidInput(
                "observation", f"no image for the policy's camera {camera!r} ({i + 1} of {list(desc.cameras)}); "
                f"images are read from {list(keys.cameras)}",
            )  # fmt: skip
        key = keys.cameras[i]
        o.images[camera].CopyFrom(_image(_required(obs, key, f"camera {camera!r}, uint8 [h, w, 3]"), key))
    if desc.state_dim:
        o.state.CopyFrom(_vector(_required(obs, keys.state, f"float [{desc.state_dim}]"), keys.state))
    if desc.lowdim_dim:
        o.lowdim.CopyFrom(_vector(_required(obs, keys.lowdim, f"float [{desc.lowdim_dim}]"), keys.lowdim))
    params = pb.SelectParams()
    if keys.num_candidates in obs:
        params.num_candidates = _integer(obs[keys.num_candidates], keys.num_candidates, 1, 2**32 - 1)
    if keys.seed in obs:
        params.seed = _integer(obs[keys.seed], keys.seed, 0, 2**64 - 1)
    if keys.switch_margin in obs:
        params.switch_margin = _number(obs[keys.switch_margin], keys.switch_margin)
    return pb.SelectActionRequest(observation=o, params=params)


def client_error(e: InvalidInput, keys: ObservationKeys, desc: PolicyDescription) -> InvalidInput:
    """A codec error about the translated request, with its field renamed to the client's key."""
    names = {
        "observation.state": keys.state,
        "observation.lowdim": keys.lowdim,
        "params.num_candidates": keys.num_candidates,
        "params.switch_margin": keys.switch_margin,
        "params.seed": keys.seed,
        **{f"{CAMERA_FIELD}[{quote(c)}]": k for c, k in zip(desc.cameras, keys.cameras, strict=False)},
    }
    for field, key in names.items():
        if e.field.startswith(field):
            problem = str(e).removeprefix(f"{e.field}: ")
            return InvalidInput(key + e.field[len(field) :], problem)
    return e


# ------------------------------------------------------------------ values
def _required(obs: Mapping[str, Any], key: str, want: str) -> Any:
    if key not in obs:
        present = quote(sorted(str(k) for k in obs))
        raise InvalidInput(key, f"required ({want}); the observation has keys {present}")
    return obs[key]


def _array(value: Any, key: str) -> np.ndarray:
    """An array, or a (JSON) list of numbers as one."""
    if isinstance(value, np.ndarray):
        return value
    if isinstance(value, (list, tuple, int, float, np.generic)) and not isinstance(value, bool):
        try:
            a = np.asarray(value)
        except (ValueError, TypeError):
            a = None
        if a is not None and a.dtype.kind in "biuf":
            return a
    raise InvalidInput(key, f"must be a numeric array or list of numbers, got {type(value).__name__}")


def _image(value: Any, key: str) -> pb.Image:
    a = _array(value, key)
    if a.ndim == 3 and a.shape[0] == 3 and a.shape[-1] != 3:
        a = a.transpose(1, 2, 0)  # [3, h, w] (openpi's ALOHA layout) -> [h, w, 3]
    if a.ndim != 3 or a.shape[-1] != 3 or min(a.shape) < 1:
        raise InvalidInput(key, f"image of shape {quote(a.shape)}, expected uint8 [h, w, 3] or [3, h, w]")
    if a.dtype != np.uint8:
        # JSON lists arrive as int64: fine when they are pixel values; float images are refused,
        # as their scale ([0, 1] or [0, 255]) cannot be told from the values
        if a.dtype.kind not in "iu" or a.min() < 0 or a.max() > 255:
            raise InvalidInput(key, f"image dtype {a.dtype}, expected uint8 pixels (0-255)")
        a = a.astype(np.uint8)
    h, w, _ = a.shape
    return pb.Image(encoding=pb.Image.RAW, height=h, width=w, data=np.ascontiguousarray(a).tobytes())


def _vector(value: Any, key: str) -> pb.Tensor:
    """Any numeric vector as float32 (openpi's LIBERO client sends float64); a value too large
    for float32 becomes inf, which the codec refuses as non-finite."""
    a = _array(value, key)
    with np.errstate(over="ignore"):
        a = np.ascontiguousarray(a, dtype="<f4")
    return pb.Tensor(dtype="float32", shape=list(a.shape), data=a.tobytes())


def _text(value: Any, key: str) -> str:
    if isinstance(value, bytes):
        try:
            return value.decode()
        except UnicodeDecodeError:
            raise InvalidInput(key, "must be UTF-8 text") from None
    if not isinstance(value, str):
        raise InvalidInput(key, f"must be text, got {type(value).__name__}")
    return value


def _integer(value: Any, key: str, low: int, high: int) -> int:
    v = value.item() if isinstance(value, (np.generic, np.ndarray)) and np.ndim(value) == 0 else value
    if isinstance(v, bool) or not isinstance(v, int) or not low <= v <= high:
        raise InvalidInput(key, f"{quote(value)} must be an integer in [{low}, {high}]")
    return v


def _number(value: Any, key: str) -> float:
    v = value.item() if isinstance(value, (np.generic, np.ndarray)) and np.ndim(value) == 0 else value
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise InvalidInput(key, f"{quote(value)} must be a number")
    return float(v)


def sequence_keys(obs: Mapping[str, Any], first: str, marker: str) -> Sequence[str]:
    """`first` and then every key containing `marker`, in the order sent (OFT's image layout:
    `full_image`, then each key with "wrist" in it)."""
    return (first, *(k for k in obs if isinstance(k, str) and marker in k and k != first))
