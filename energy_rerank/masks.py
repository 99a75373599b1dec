"""The one mask convention of the core, and converters from the others at the edges.

Inside energy_rerank every context mask is `valid: bool [B, S]`, True = attend to this token.
Two other conventions meet us at the edges:

- PyTorch `key_padding_mask` (the OpenVLA seed): True = padding = ignore.
- pi0 / openpi (JAX): True = valid, but often stored as 0/1 integers or floats.
"""

from __future__ import annotations

import torch


def valid_from_padding_mask(padding_mask: torch.Tensor) -> torch.Tensor:
    """PyTorch key_padding_mask (True = ignore) -> valid (True = attend)."""
    return ~_as_bool(padding_mask, "padding_mask")


def padding_mask_from_valid(valid: torch.Tensor) -> torch.Tensor:
    """valid (True = attend) -> PyTorch key_padding_mask (True = ignore)."""
    return ~_as_bool(valid, "valid")


def valid_from_pi0_mask(pi0_mask: torch.Tensor) -> torch.Tensor:
    """openpi input mask (True/1 = valid token) -> valid. Same meaning, made a bool tensor."""
    return _as_bool(pi0_mask, "pi0_mask")


def openvla_context_valid(num_patches: int, action_tokens: int, batch: int = 1) -> torch.Tensor:
    """The seed's context mask for OpenVLA-OFT: patches attended, action tokens and EOS ignored.

    The seed builds `[patch zeros, action_mask, eos ones]` in the padding convention; this is
    the same mask in ours: [B, num_patches + action_tokens + 1].
    """
    valid = torch.zeros(batch, num_patches + action_tokens + 1, dtype=torch.bool)
    valid[:, :num_patches] = True
    return valid


def _as_bool(mask: torch.Tensor, name: str) -> torch.Tensor:
    if mask.dtype == torch.bool:
        return mask
    if mask.is_floating_point() or not mask.is_complex():
        uniq = torch.unique(mask)
        if not bool(((uniq == 0) | (uniq == 1)).all()):
            raise ValueError(f"{name} must be boolean or 0/1, found values {uniq[:8].tolist()}")
        return mask != 0
    raise TypeError(f"{name} has unsupported dtype {mask.dtype}")
