"""EnergyModel: E(context, action chunk) with cross attention from action steps to context.

Architecture (the OpenVLA-OFT energy head this project started from; parameter names kept):
  context  [B, S, D_h] --state_linear (MLPResNet)--> [B, S, hid] --K/V projections-->
  actions  [B, N, H, A] --action_linear (MLPResNet) + sinusoidal PE--> queries [B, N, H, hid]
  cross attention (hid, heads) masked by `valid` -> out_proj -> prediction_head (MLPResNet -> 1)
  -> activation per step -> mean over H -> energies [B, N]

Two entry points compute the same function:
- `encode_context` once per context, then `score` for any number of candidates: the context
  is projected once and shared by every candidate (never copied per candidate);
- `forward(hidden, actions, valid)`: the seed's pairwise form through nn.MultiheadAttention,
  kept as an independent reference for tests and for seed-style training code.

Masks follow the core convention: `valid` True = attend (see energy_rerank.masks).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from energy_rerank.config import EnergyConfig
from energy_rerank.nn import MLPResNet, SinusoidalPositionalEncoding


@dataclass
class EncodedContext:
    """Per-context keys and values, computed once and shared by all candidates."""

    keys: torch.Tensor  # [B, heads, S, hid/heads]
    values: torch.Tensor  # [B, heads, S, hid/heads]
    valid: torch.Tensor  # [B, S] bool, True = attend

    @property
    def batch(self) -> int:
        # No int(): under torch.export this stays symbolic, so exported graphs keep B dynamic.
        return self.keys.shape[0]


class NonFiniteError(FloatingPointError):
    """An intermediate of the energy head is NaN or Inf (raised only while checks are on)."""


class EnergyModel(nn.Module):
    def __init__(self, config: EnergyConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        self.state_linear = MLPResNet(c.context_blocks, c.context_dim, c.hidden, c.hidden)
        self.action_linear = MLPResNet(c.action_blocks, c.action_dim, c.hidden, c.hidden)
        self.pe_layer = SinusoidalPositionalEncoding(c.hidden, c.pe_dropout, c.chunk_len)
        self.cross = nn.MultiheadAttention(c.hidden, c.heads, batch_first=True)
        self.prediction_head = MLPResNet(c.head_blocks, c.hidden, c.hidden, 1)
        # Finite checks cost a device sync each; they run in training and when debugging only.
        self.debug_checks = False

    # ------------------------------------------------------------------ helpers
    @property
    def checks_enabled(self) -> bool:
        return self.training or self.debug_checks

    def _check(self, x: torch.Tensor, name: str) -> None:
        if self.checks_enabled and not bool(torch.isfinite(x).all()):
            raise NonFiniteError(f"energy head: non-finite values in {name} (shape {tuple(x.shape)})")

    @property
    def compute_dtype(self) -> torch.dtype:
        return self.state_linear.fc1.weight.dtype

    def slice_actions(self, actions: torch.Tensor) -> torch.Tensor:
        """Keep the scored action dims: [..., A_in] -> [..., action_dim]."""
        lo = self.config.action_offset
        hi = lo + self.config.action_dim
        if actions.shape[-1] < hi:
            raise ValueError(
                f"actions have {actions.shape[-1]} dims; the energy head reads dims [{lo}, {hi})"
            )
        return actions[..., lo:hi]

    def activate(self, raw: torch.Tensor) -> torch.Tensor:
        """Per-step raw prediction -> per-step energy."""
        c = self.config
        if c.activation == "sigmoid":
            return torch.sigmoid(raw * c.sigmoid_prescale) * c.sigmoid_scale + c.sigmoid_offset
        if c.activation == "softplus":
            return F.softplus(raw * c.softplus_prescale) * c.softplus_scale + c.softplus_offset
        return raw

    def _qkv_weights(self) -> tuple[torch.Tensor, ...]:
        w, b = self.cross.in_proj_weight, self.cross.in_proj_bias
        h = self.config.hidden
        assert b is not None
        return w[:h], w[h : 2 * h], w[2 * h :], b[:h], b[h : 2 * h], b[2 * h :]

    # ------------------------------------------------------------------ shared-context path
    def encode_context(self, hidden: torch.Tensor, valid: torch.Tensor | None = None) -> EncodedContext:
        """hidden [B, S, D_h], valid [B, S] (True = attend; None = all valid) -> EncodedContext."""
        c = self.config
        if hidden.dim() != 3 or hidden.shape[-1] != c.context_dim:
            raise ValueError(f"hidden must be [B, S, {c.context_dim}], got {tuple(hidden.shape)}")
        b, s, _ = hidden.shape
        if valid is None:
            valid = torch.ones(b, s, dtype=torch.bool, device=hidden.device)
        if valid.shape != (b, s) or valid.dtype != torch.bool:
            raise ValueError(f"valid must be bool [{b}, {s}], got {valid.dtype} {tuple(valid.shape)}")
        if self.checks_enabled and not bool(valid.any(-1).all()):
            raise ValueError("every context needs at least one valid token")
        hidden = hidden.to(self.compute_dtype)
        self._check(hidden, "hidden")
        ctx = self.state_linear(hidden)  # [B, S, hid]
        self._check(ctx, "context_mapped")
        _, wk, wv, _, bk, bv = self._qkv_weights()
        heads, dh = c.heads, c.hidden // c.heads
        k = F.linear(ctx, wk, bk).view(b, s, heads, dh).transpose(1, 2)  # [B, heads, S, dh]
        v = F.linear(ctx, wv, bv).view(b, s, heads, dh).transpose(1, 2)  # [B, heads, S, dh]
        return EncodedContext(keys=k, values=v, valid=valid)

    def embed_actions(self, actions: torch.Tensor) -> torch.Tensor:
        """actions [..., H, A_in] -> action queries before projection [..., H, hid]."""
        a = self.slice_actions(actions).to(self.compute_dtype)
        self._check(a, "actions")
        q = self.pe_layer(self.action_linear(a))
        self._check(q, "action_mapped")
        return q

    def energy_from_attention(self, z: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        """Attention output before out_proj [..., H, hid] and the action embedding that asked
        for it [..., H, hid] -> energies [...] (mean over H)."""
        z = self.cross.out_proj(z)
        if self.config.action_residual:
            z = z + queries
        self._check(z, "attn_out")
        raw = self.prediction_head(z).squeeze(-1)  # [..., H]
        self._check(raw, "energy_feature_step")
        energy = self.activate(raw).mean(-1)
        self._check(energy, "energy")
        return energy

    def score(self, context: EncodedContext, actions: torch.Tensor) -> torch.Tensor:
        """context for B observations, actions [B, N, H, A_in] -> energies [B, N] (lower = better)."""
        if actions.dim() != 4 or actions.shape[0] != context.batch:
            raise ValueError(
                f"actions must be [B={context.batch}, N, H, A], got {tuple(actions.shape)}"
            )
        b, n, h, _ = actions.shape
        c = self.config
        heads, dh = c.heads, c.hidden // c.heads
        wq, _, _, bq, _, _ = self._qkv_weights()
        emb = self.embed_actions(actions)  # [B, N, H, hid]
        q = F.linear(emb, wq, bq).reshape(b, n * h, heads, dh).transpose(1, 2)  # [B, heads, N*H, dh]
        mask = context.valid[:, None, None, :]  # [B, 1, 1, S]; SDPA bool mask: True = attend
        z = F.scaled_dot_product_attention(q, context.keys, context.values, attn_mask=mask)
        z = z.transpose(1, 2).reshape(b, n, h, c.hidden)  # [B, N, H, hid]
        return self.energy_from_attention(z, emb)

    def energy_matrix(self, context: EncodedContext, actions: torch.Tensor) -> torch.Tensor:
        """In-batch matrix E[i, j] = E(context_i, actions_j) for actions [B, H, A] -> [B, B]."""
        b = context.batch
        return self.score(context, actions.unsqueeze(0).expand(b, *actions.shape))

    # ------------------------------------------------------------------ pairwise (seed) path
    def forward(
        self, hidden: torch.Tensor, actions: torch.Tensor, valid: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Seed-style pairwise energy: hidden [B, S, D_h], actions [B, H, A_in] -> [B]."""
        hidden = hidden.to(self.compute_dtype)
        ctx = self.state_linear(hidden)  # [B, S, hid]
        q = self.embed_actions(actions)  # [B, H, hid]
        pad = None if valid is None else ~valid
        z, _ = self.cross(q, ctx, ctx, key_padding_mask=pad, need_weights=False)
        if self.config.action_residual:
            z = z + q
        self._check(z, "attn_out")
        raw = self.prediction_head(z).squeeze(-1)  # [B, H]
        return self.activate(raw).mean(-1)

    # ------------------------------------------------------------------ bundles
    def save_pretrained(self, path: str | Path, stats: Any = None, extra: dict[str, Any] | None = None) -> Path:
        from energy_rerank.checkpoint import save_bundle

        return save_bundle(path, "energy_model", self.config, self, stats=stats, extra=extra)

    @classmethod
    def from_pretrained(cls, path: str | Path, map_location: str | torch.device = "cpu") -> EnergyModel:
        from energy_rerank.checkpoint import load_bundle

        model, _ = load_bundle(path, "energy_model", EnergyConfig, cls, map_location=map_location)
        return model

    def num_parameters(self, exclude_context_projection: bool = False) -> int:
        total = sum(p.numel() for p in self.parameters())
        if exclude_context_projection:
            total -= self.state_linear.fc1.weight.numel()
        return total
