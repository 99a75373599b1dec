"""ReferenceVLA: a small VLA of the OpenVLA-OFT kind that trains on a CPU.

    [state tokens | image patch tokens | BOS instruction bytes EOS pad.. | H action queries]
        -> Llama decoder (transformers LlamaModel, output_hidden_states=True)
        -> MLPResNet L1 head on the action-query hidden states -> chunk [H, A]

State tokens: by default one per state dim (value * w_d + e_d), so an action query can attend
to the dims of the object the instruction names; `state_tokens = k` projects the whole vector
to k tokens with an MLP instead (fewer tokens, slower to learn object selection).

The H action queries are learned embeddings decoded in parallel (one token per chunk step).
Applying the same head to the action-query hidden states of *every* layer gives the "layer
actions": poor chunks from early layers, the policy's own from the last.
The context for the energy head is the last layer's hidden states (or config.context_layer's);
state, image and instruction tokens are valid, padding and action queries are not (the seed's mask).

The sequence length is fixed by the config (instructions are padded or cut to
`max_text_len` bytes), so every observation gives the same S. Configs: `ReferenceConfig.preset
("tiny" | "small", lowdim_dim=..., ...)`; any config builds a random-weight policy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers import LlamaConfig, LlamaModel

from energy_rerank.checkpoint import load_bundle, save_bundle
from energy_rerank.nn import MLPResNet
from energy_rerank.normalize import NormStats
from energy_rerank.policy.base import Observation, PolicyDescription, Proposals
from energy_rerank.policy.tokenizer import BOS_ID, EOS_ID, PAD_ID, VOCAB_SIZE, ByteTokenizer
from energy_rerank.policy.vision import PatchEncoder, images_to_tensor
from energy_rerank.policy.windows import observation_vector

KIND = "reference_policy"  # bundle kind written by save() and dispatched on by load_policy


@dataclass(frozen=True)
class ReferenceConfig:
    """Architecture and inputs of the reference policy. Sizes: see SIZES / preset()."""

    name: str = "reference-tiny"  # reported in PolicyDescription / GetModelInfo
    hidden_size: int = 64  # D: backbone width = context width the energy head reads
    num_layers: int = 3  # L: decoder layers = number of layer-action chunks
    num_heads: int = 4  # attention heads per layer (hidden_size must divide by it)
    intermediate_size: int = 128  # MLP width inside each decoder layer
    chunk_len: int = 8  # H: action steps per chunk = number of action query tokens
    action_dim: int = 7  # A: action dims per step
    gripper_dims: tuple[int, ...] = (6,)  # binary action dims (kept unnormalised, sampled as binary)
    lowdim_dim: int = 0  # dims of Observation.lowdim read (0 = not read)
    state_dim: int = 0  # dims of Observation.state read (0 = not read)
    state_tokens: int = 0  # 0: one token per state dim (attention can pick one object); k: an MLP to k tokens
    cameras: tuple[str, ...] = ()  # camera names read, in order (empty = no images)
    image_size: tuple[int, int] = (32, 32)  # (height, width) images are resized to
    patch_size: int = 8  # square patch side of the image encoder
    max_text_len: int = 40  # instruction ids incl. BOS/EOS; longer instructions are cut
    head_blocks: int = 2  # MLPResNet blocks in the L1 action head
    head_hidden: int = 128  # MLPResNet width of the action head
    # Hidden states the energy head reads: index into [embeddings, layer 1, ..., layer L]; -1 = the
    # last layer (the seed's). Earlier layers are a research option: no gain measured yet (docs/results.md).
    context_layer: int = -1

    def __post_init__(self) -> None:
        for f in ("hidden_size", "num_layers", "num_heads", "chunk_len", "action_dim", "head_hidden"):
            if getattr(self, f) < 1:
                raise ValueError(f"{f} must be >= 1, got {getattr(self, f)}")
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"hidden_size={self.hidden_size} must be divisible by num_heads={self.num_heads}"
            )
        if any(not 0 <= d < self.action_dim for d in self.gripper_dims):
            raise ValueError(f"gripper_dims {self.gripper_dims} must lie in [0, {self.action_dim})")
        if self.state_tokens < 0:
            raise ValueError(f"state_tokens must be >= 0, got {self.state_tokens}")
        if not -(self.num_layers + 1) <= self.context_layer <= self.num_layers:
            raise ValueError(
                f"context_layer must index the {self.num_layers + 1} hidden states (embeddings + "
                f"{self.num_layers} layers), got {self.context_layer}"
            )

    @property
    def vector_dim(self) -> int:
        """Width of the [lowdim, state] vector the state projector reads."""
        return self.lowdim_dim + self.state_dim

    @property
    def num_state_tokens(self) -> int:
        """Tokens the state vector becomes (0 when the policy reads no state)."""
        return (self.state_tokens or self.vector_dim) if self.vector_dim else 0

    @property
    def seq_len(self) -> int:
        """S: tokens per observation (fixed)."""
        state = self.num_state_tokens
        patches = (
            len(self.cameras)
            * (self.image_size[0] // self.patch_size)
            * (self.image_size[1] // self.patch_size)
        )
        return state + patches + self.max_text_len + self.chunk_len

    @classmethod
    def preset(cls, size: str, **overrides: Any) -> ReferenceConfig:
        """A named size ("tiny" for tests, "small" for demos) with input fields set by the caller."""
        if size not in SIZES:
            raise ValueError(f"unknown size {size!r}; choose from {sorted(SIZES)}")
        return cls(**{"name": f"reference-{size}", **SIZES[size], **overrides})


SIZES: dict[str, dict[str, int]] = {
    "tiny": dict(hidden_size=64, num_layers=3, num_heads=4, intermediate_size=128, head_hidden=128),
    "small": dict(hidden_size=128, num_layers=4, num_heads=4, intermediate_size=384, head_hidden=256),
}


@dataclass
class PolicyInputs:
    """Observations turned into tensors (model units); encode once, reuse for many steps."""

    vector: torch.Tensor | None  # [B, lowdim_dim + state_dim] normalised state vector
    images: torch.Tensor | None  # [B, C, 3, h, w] float in [-1, 1]
    text_ids: torch.Tensor  # [B, max_text_len] long byte ids
    text_valid: torch.Tensor  # [B, max_text_len] bool, False on padding

    @property
    def batch(self) -> int:
        return int(self.text_ids.shape[0])

    def select(self, index: torch.Tensor | slice) -> PolicyInputs:
        """Rows `index` of every field (e.g. one training batch)."""
        return PolicyInputs(
            vector=None if self.vector is None else self.vector[index],
            images=None if self.images is None else self.images[index],
            text_ids=self.text_ids[index],
            text_valid=self.text_valid[index],
        )

    def to(self, device: torch.device | str) -> PolicyInputs:
        return PolicyInputs(
            vector=None if self.vector is None else self.vector.to(device),
            images=None if self.images is None else self.images.to(device),
            text_ids=self.text_ids.to(device),
            text_valid=self.text_valid.to(device),
        )


class ReferenceVLA(nn.Module):
    """The reference policy; implements the Proposer protocol (description, stats, propose)."""

    def __init__(self, config: ReferenceConfig, stats: NormStats | None = None) -> None:
        super().__init__()
        c = self.config = config
        self.stats = stats
        self.tokenizer = ByteTokenizer(c.max_text_len)
        self.backbone = LlamaModel(
            LlamaConfig(
                vocab_size=VOCAB_SIZE,
                hidden_size=c.hidden_size,
                intermediate_size=c.intermediate_size,
                num_hidden_layers=c.num_layers,
                num_attention_heads=c.num_heads,
                num_key_value_heads=c.num_heads,
                max_position_embeddings=c.seq_len,
                pad_token_id=PAD_ID,
                bos_token_id=BOS_ID,
                eos_token_id=EOS_ID,
                tie_word_embeddings=False,
            )
        )
        self.state_proj: nn.Module | None = None
        if c.vector_dim and c.state_tokens:
            self.state_proj = nn.Sequential(
                nn.Linear(c.vector_dim, c.hidden_size),
                nn.GELU(),
                nn.Linear(c.hidden_size, c.state_tokens * c.hidden_size),
            )
        elif c.vector_dim:
            self.state_proj = PerDimTokens(c.vector_dim, c.hidden_size)
        self.vision = (
            PatchEncoder(c.hidden_size, c.image_size, c.patch_size, len(c.cameras)) if c.cameras else None
        )
        self.action_queries = nn.Parameter(torch.randn(c.chunk_len, c.hidden_size) * 0.02)
        self.head = MLPResNet(c.head_blocks, c.hidden_size, c.head_hidden, c.action_dim)
        self.description = PolicyDescription(
            name=c.name,
            hidden_size=c.hidden_size,
            chunk_len=c.chunk_len,
            action_dim=c.action_dim,
            num_layers=c.num_layers,
            cameras=c.cameras,
            image_size=c.image_size if c.cameras else None,
            state_dim=c.state_dim,
            lowdim_dim=c.lowdim_dim,
            gripper_dims=c.gripper_dims,
        )
        self._check_stats()

    # ------------------------------------------------------------------ observations -> tensors
    def encode(self, observations: Sequence[Observation]) -> PolicyInputs:
        """Validate and tensorise observations (robot units in, model units out; CPU tensors)."""
        c = self.config
        if len(observations) == 0:
            raise ValueError("propose() needs at least one observation")
        vector = None
        if c.vector_dim:
            rows = [
                observation_vector(o, c.lowdim_dim > 0, c.state_dim > 0, i)
                for i, o in enumerate(observations)
            ]
            for i, (o, r) in enumerate(zip(observations, rows, strict=True)):
                if r.shape[0] != c.vector_dim or not np.isfinite(r).all():
                    raise ValueError(
                        f"observation {i}: lowdim must be finite float [{c.lowdim_dim}] and state finite "
                        f"float [{c.state_dim}]; got lowdim {_shape(o.lowdim)}, state {_shape(o.state)}"
                    )
            vector = torch.from_numpy(np.stack(rows))
            if self.stats is not None and self.stats.state is not None:
                vector = self.stats.normalize_state(vector)
        images = None
        if c.cameras:
            images = images_to_tensor([o.images for o in observations], c.cameras, c.image_size)
        ids, valid = self.tokenizer.encode([o.instruction for o in observations])
        return PolicyInputs(vector, images, ids, valid)

    # ------------------------------------------------------------------ the network
    def forward(self, inputs: PolicyInputs) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> context [B, S, D] (config.context_layer), valid [B, S] bool, action hidden [B, L, H, D]
        (every layer)."""
        c = self.config
        dev = self.action_queries.device
        inputs = inputs.to(dev)
        b = inputs.batch
        parts: list[torch.Tensor] = []  # token embeddings, each [B, n, D]
        valid: list[torch.Tensor] = []  # [B, n] bool per part
        if self.state_proj is not None:
            if inputs.vector is None:
                raise ValueError("this policy reads a state vector but inputs.vector is None")
            tokens = self.state_proj(inputs.vector.float()).view(b, -1, c.hidden_size)
            parts.append(tokens)
            valid.append(torch.ones(tokens.shape[:2], dtype=torch.bool, device=dev))
        if self.vision is not None:
            if inputs.images is None:
                raise ValueError("this policy reads images but inputs.images is None")
            patches = self.vision(inputs.images.float())
            parts.append(patches)
            valid.append(torch.ones(patches.shape[:2], dtype=torch.bool, device=dev))
        parts.append(self.backbone.embed_tokens(inputs.text_ids))
        valid.append(inputs.text_valid)
        parts.append(self.action_queries.expand(b, -1, -1))
        valid.append(torch.zeros(b, c.chunk_len, dtype=torch.bool, device=dev))
        embeds, context_valid = torch.cat(parts, 1), torch.cat(valid, 1)  # [B, S, D], [B, S]
        # The backbone attends to everything but padding (action queries see earlier queries, causally);
        # the energy head attends only to observation and instruction tokens.
        attend = context_valid.clone()
        attend[:, -c.chunk_len :] = True
        out = self.backbone(inputs_embeds=embeds, attention_mask=attend.long(), output_hidden_states=True)
        per_layer = out.hidden_states[1:]  # L x [B, S, D]; [0] is the embedding output
        action_hidden = torch.stack([h[:, -c.chunk_len :] for h in per_layer], dim=1)  # [B, L, H, D]
        context = out.hidden_states[c.context_layer]  # [-1] is last_hidden_state, after the final norm
        return context, context_valid, action_hidden

    # ------------------------------------------------------------------ Proposer
    def propose(self, observations: Sequence[Observation]) -> Proposals:
        return self.propose_inputs(self.encode(observations))

    def propose_inputs(self, inputs: PolicyInputs) -> Proposals:
        """Proposals for pre-encoded inputs: head applied without grad, in eval mode, to every layer."""
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                context, valid, action_hidden = self(inputs)
                layer_actions = self.head(action_hidden)  # [B, L, H, A]
        finally:
            self.train(was_training)
        return Proposals(context=context, valid=valid, layer_actions=layer_actions, base=layer_actions[:, -1])

    # ------------------------------------------------------------------ bundles
    def save(self, path: str | Path) -> Path:
        """Write a bundle (config.json + model.safetensors + stats.json) of kind "reference_policy"."""
        return save_bundle(path, KIND, self.config, self, stats=self.stats)

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> ReferenceVLA:
        model, stats = load_bundle(path, KIND, ReferenceConfig, cls, map_location=device)
        model.stats = stats
        model._check_stats()
        return model

    def _check_stats(self) -> None:
        st, c = self.stats, self.config
        if st is None:
            return
        if st.action.dim != c.action_dim:
            raise ValueError(f"stats.action has {st.action.dim} dims, policy action_dim is {c.action_dim}")
        if st.state is not None and st.state.dim != c.vector_dim:
            raise ValueError(
                f"stats.state has {st.state.dim} dims, policy reads lowdim_dim + state_dim = {c.vector_dim}"
            )


class PerDimTokens(nn.Module):
    """One token per state dim: value * w_d + e_d, so attention can pick single objects' dims."""

    def __init__(self, dims: int, width: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.randn(dims, width) * 0.5)
        self.embed = nn.Parameter(torch.randn(dims, width) * 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x [B, V] -> [B, V, D]
        return x[..., None] * self.scale + self.embed


def _shape(x: np.ndarray | None) -> str:
    return "None" if x is None else f"{np.asarray(x).dtype} {tuple(np.shape(x))}"
