"""Random scoring inputs of a given shape: the export check, the benchmarks and the tests use them."""

from __future__ import annotations

import torch


def random_inputs(
    b: int, n: int, s: int, d: int, h: int, a: int, dtype: torch.dtype, device: torch.device, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """hidden [B, S, D], valid [B, S] (a random tail of each context masked), candidates [B, N, H, A]."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    hidden = torch.randn(b, s, d, generator=g).to(device=device, dtype=dtype)
    lengths = torch.randint(max(1, s // 2), s + 1, (b,), generator=g)
    valid = (torch.arange(s)[None, :] < lengths[:, None]).to(device)
    candidates = torch.rand(b, n, h, a, generator=g).mul_(2).sub_(1).to(device)
    return hidden, valid, candidates
