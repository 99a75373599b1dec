"""Synthetic policy features with a known answer, for the debug preset and the trainer's tests.

No policy runs here: a latent task variable z [k] per sample decides both the context tokens
and the expert chunk, so an energy head can only rank chunks by reading the context. Layer
actions imitate a policy whose early layers are poor: layer l is the expert chunk plus noise
that shrinks with depth, and the last layer is the base chunk.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from energy_rerank.training.cache import FeatureBatch


@dataclass(frozen=True)
class SyntheticFeatureConfig:
    """Shapes and difficulty of the synthetic features."""

    context_dim: int = 32  # D: width of the fake hidden states
    tokens: int = 12  # S: context tokens per sample (a random tail of each is padding)
    min_valid: int = 6  # fewest valid tokens a sample keeps
    latent_dim: int = 6  # k: size of the task variable behind context and chunk
    chunk_len: int = 8  # H: steps per chunk
    action_dim: int = 4  # A: dims per step
    layers: int = 4  # L: layer-action chunks per sample (last = base)
    first_layer_sigma: float = 0.6  # noise of the first layer's chunk around the expert
    last_layer_sigma: float = 0.15  # noise of the base chunk around the expert
    token_noise: float = 0.1  # noise added to every context token
    world_seed: int = 1234  # fixes the random maps z -> tokens and z -> chunk (the "task")


def make_synthetic_features(n: int, cfg: SyntheticFeatureConfig, seed: int) -> FeatureBatch:
    """n samples of the task fixed by cfg.world_seed, drawn with `seed`."""
    world = torch.Generator().manual_seed(cfg.world_seed)
    k, d, s, h, a = cfg.latent_dim, cfg.context_dim, cfg.tokens, cfg.chunk_len, cfg.action_dim
    token_maps = torch.randn(s, k, d, generator=world) / k**0.5  # [S, k, D]
    chunk_map = torch.randn(k, h * a, generator=world) / k**0.5  # [k, H*A]
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, k, generator=g)  # [n, k]
    context = torch.einsum("nk,skd->nsd", z, token_maps)  # [n, S, D]
    context = context + cfg.token_noise * torch.randn(n, s, d, generator=g)
    valid_len = torch.randint(cfg.min_valid, s + 1, (n,), generator=g)
    valid = torch.arange(s)[None, :] < valid_len[:, None]  # [n, S]
    context = context * valid[..., None]  # padded tokens carry nothing
    expert = torch.tanh(z @ chunk_map).view(n, h, a)  # [n, H, A] inside (-1, 1) like normalised actions
    sigmas = torch.linspace(cfg.first_layer_sigma, cfg.last_layer_sigma, cfg.layers)  # [L]
    layer_actions = expert[:, None] + sigmas[None, :, None, None] * torch.randn(n, cfg.layers, h, a, generator=g)
    return FeatureBatch(
        context=context,
        valid=valid,
        layer_actions=layer_actions,
        base=layer_actions[:, -1].clone(),
        expert=expert,
    )
