"""Typed, frozen configs for the core, and their JSON round trip.

Every config is a frozen dataclass with a comment on each field. Configs are stored as
JSON (never pickle) and loaded with `config_from_dict`, which rejects unknown keys so a
bundle written by a newer or different model fails loudly instead of being half-read.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

EnergyActivation = Literal["softplus", "sigmoid", "identity"]

T = TypeVar("T")


@dataclass(frozen=True)
class EnergyConfig:
    """Architecture of the energy head; defaults follow the original OpenVLA-OFT energy head ("the seed")."""

    context_dim: int = 4096  # D_h: width of the policy hidden states the head reads
    action_dim: int = 7  # A: action dims the head scores (LIBERO: 7 = 6-D EE delta + gripper)
    action_offset: int = 0  # first action dim scored; inputs may be wider (pi0 pads to 32)
    chunk_len: int = 8  # H: max action steps per chunk (sizes the positional table)
    hidden: int = 512  # width of the attention and prediction MLPs
    heads: int = 8  # cross-attention heads; hidden must divide by it
    context_blocks: int = 1  # MLPResNet blocks in the context encoder (seed: 1)
    action_blocks: int = 1  # MLPResNet blocks in the action encoder (seed: 1)
    head_blocks: int = 2  # MLPResNet blocks in the per-step prediction head (seed: 2)
    pe_dropout: float = 0.2  # dropout after the positional encoding (seed: 0.2; off in eval)
    action_residual: bool = False  # add the action embedding to the attention output (seed: no);
    # without it the action reaches the prediction head only through attention weights
    activation: EnergyActivation = "softplus"  # energy squashing: sigmoid = the seed's (0.1, 2.1)
    sigmoid_prescale: float = 0.5  # seed: sigmoid(raw * 0.5) * 2.0 + 0.1
    sigmoid_scale: float = 2.0  # seed energy_scale
    sigmoid_offset: float = 0.1  # seed energy_offset
    softplus_prescale: float = 0.1  # softplus(raw * 0.1) * 5 + 1e-3: unbounded above, unlike the seed's saturating sigmoid
    softplus_scale: float = 5.0  # keeps early energies O(1) while staying unbounded above
    softplus_offset: float = 1e-3  # keeps energies strictly positive

    def __post_init__(self) -> None:
        if self.hidden % self.heads:
            raise ValueError(f"hidden={self.hidden} must be divisible by heads={self.heads}")
        if self.activation not in typing.get_args(EnergyActivation):
            raise ValueError(
                f"activation={self.activation!r}; expected one of {typing.get_args(EnergyActivation)}"
            )
        for name in ("context_dim", "action_dim", "chunk_len", "hidden", "heads"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.action_offset < 0:
            raise ValueError(f"action_offset must be >= 0, got {self.action_offset}")


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """Dataclass -> plain JSON-able dict (tuples become lists)."""
    return dataclasses.asdict(cfg)


def config_from_dict(cls: type[T], data: dict[str, Any]) -> T:
    """Build a (possibly nested) frozen dataclass from a dict, rejecting unknown keys."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls} is not a dataclass")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown config keys {unknown}; known: {sorted(names)}")
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name in data:
            kwargs[f.name] = _coerce(hints[f.name], data[f.name])
    return cls(**kwargs)


def _coerce(tp: Any, value: Any) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp) and isinstance(value, dict):
        return config_from_dict(tp, value)  # type: ignore[arg-type]
    if origin is tuple and isinstance(value, list):
        args = typing.get_args(tp)
        inner = args[0] if args else Any
        return tuple(_coerce(inner, v) for v in value)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            if arg is type(None) and value is None:
                return None
            if dataclasses.is_dataclass(arg) and isinstance(value, dict):
                return config_from_dict(arg, value)  # type: ignore[arg-type]
            if typing.get_origin(arg) is tuple and isinstance(value, list):
                return _coerce(arg, value)
    return value
