"""HFAdapter: a user's transformers checkpoint on local disk + an action head = a Proposer.

Any model that `transformers.AutoModel.from_pretrained(dir, local_files_only=True)` loads and
that returns `hidden_states` when called with `output_hidden_states=True` can serve, given:
- an action head (an MLPResNet, OpenVLA-OFT style, stored in the bundle's model.safetensors);
- a description of where the action tokens sit (`ActionTokens`): the prompt is followed by
  `count` placeholder tokens, then `trailing` tokens (e.g. OpenVLA-OFT's EOS). The head reads
  the hidden states one position left of the placeholders, as OpenVLA-OFT does: the last prompt
  token and every placeholder but the last (a causal LM's state at t predicts token t + 1, and
  OFT trains and runs its L1 head on that shift; `action_token_states`). With
  `tokens_per_step` = k > 1 the k states of one chunk step are concatenated before the head
  (OFT: one token per action dim, head input A * D).

Inputs: the instruction through `prompt` (and, with `state_in_prompt`, the low-dim/proprio
state written as numbers), tokenised by the checkpoint's own tokenizer ("auto") or the
built-in byte tokenizer ("byte"). Prompts are left-padded so the action tokens end every row.
Image-reading VLAs need their own processor: subclass and override `build_inputs`.
Nothing is downloaded, and no code is executed from the checkpoint (no trust_remote_code).

Bundle (kind "hf_adapter"): config.json (HFAdapterConfig), model.safetensors (the head),
stats.json; `backbone` points at the transformers directory, relative to the bundle or absolute.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from energy_rerank.checkpoint import BundleError, load_bundle_with_config, save_bundle
from energy_rerank.nn import MLPResNet
from energy_rerank.normalize import NormStats
from energy_rerank.policy.base import Observation, PolicyDescription, Proposals
from energy_rerank.policy.tokenizer import BOS_ID, EOS_ID, VOCAB_SIZE

KIND = "hf_adapter"


@dataclass(frozen=True)
class ActionTokens:
    """Where the action tokens sit: [prompt ... | count action tokens | trailing tokens]."""

    count: int = 8  # action tokens after the prompt; must equal chunk_len * tokens_per_step
    tokens_per_step: int = 1  # 1: one token per chunk step; A: one per action dim (OpenVLA-OFT)
    token_id: int = 0  # input id placed at every action-token position
    trailing: int = 0  # tokens after the action tokens (not read by the head)
    trailing_id: int = 0  # input id of those trailing tokens (e.g. the tokenizer's EOS)

    def check(self, chunk_len: int) -> None:
        """The placeholders must cover the chunk exactly: count = chunk_len * tokens_per_step."""
        if self.tokens_per_step < 1 or self.count != chunk_len * self.tokens_per_step:
            raise ValueError(
                f"action_tokens.count={self.count} must equal chunk_len * tokens_per_step = "
                f"{chunk_len} * {self.tokens_per_step} = {chunk_len * max(self.tokens_per_step, 0)}"
            )
        if self.trailing < 0:
            raise ValueError(f"action_tokens.trailing must be >= 0, got {self.trailing}")


@dataclass(frozen=True)
class HFAdapterConfig:
    """A transformers backbone, its action tokens and action head, and how prompts are built."""

    backbone: str  # transformers checkpoint directory (relative to the bundle directory, or absolute)
    hidden_size: int  # D of the backbone (checked against its config when loading)
    chunk_len: int = 8  # H: steps per chunk
    action_dim: int = 7  # A: action dims per step (normalised space)
    action_tokens: ActionTokens = field(default_factory=ActionTokens)  # where the head reads
    head_blocks: int = 2  # MLPResNet blocks of the action head
    head_hidden: int = 256  # MLPResNet width of the action head
    gripper_dims: tuple[int, ...] = (6,)  # binary action dims
    tokenizer: Literal["byte", "auto"] = "byte"  # built-in byte tokenizer or the checkpoint's AutoTokenizer
    prompt: str = "In: What action should the robot take to {instruction}?\nOut:"  # OpenVLA's prompt
    state_in_prompt: bool = False  # append "state: v0 v1 ..." (lowdim then proprio, 3 decimals)
    max_prompt_len: int = 128  # prompt tokens kept (the start is cut when longer)
    name: str = "hf-adapter"  # reported in PolicyDescription
    context_layer: int = -1  # hidden state the energy head reads: 0 = embeddings, l = layer l, -1 = last

    def __post_init__(self) -> None:
        self.action_tokens.check(self.chunk_len)
        if self.tokenizer not in ("byte", "auto"):
            raise ValueError(f"tokenizer must be 'byte' or 'auto', got {self.tokenizer!r}")
        if "{instruction}" not in self.prompt:
            raise ValueError("prompt must contain '{instruction}'")
        if any(not 0 <= d < self.action_dim for d in self.gripper_dims):
            raise ValueError(f"gripper_dims {self.gripper_dims} must lie in [0, {self.action_dim})")


def action_token_states(hidden: torch.Tensor, first: int, count: int) -> torch.Tensor:
    """hidden [B, S, D], placeholders at [first, first + count) -> the [B, count, D] states an
    OpenVLA-OFT head reads: one position left, from the last prompt token on."""
    if first < 1:
        raise ValueError(f"the action tokens start at position {first}; at least one prompt token must precede them")
    return hidden[:, first - 1 : first - 1 + count]


def prompt_text(prompt: str, state_in_prompt: bool, obs: Observation, index: int) -> str:
    """The instruction in its prompt (and, with state_in_prompt, "state: v0 v1 ...": lowdim then proprio)."""
    text = prompt.format(instruction=obs.instruction.strip().lower().rstrip("."))
    if state_in_prompt:
        parts = [np.asarray(v, np.float32).reshape(-1) for v in (obs.lowdim, obs.state) if v is not None]
        if not parts:
            raise ValueError(f"observation {index}: state_in_prompt needs lowdim or state, both are empty")
        text += " state: " + " ".join(f"{x:.3f}" for x in np.concatenate(parts))
    return text


def resolve_checkpoint(bundle: Path, reference: str) -> Path:
    """A bundle's pointer to a transformers directory (relative to the bundle, or absolute), checked."""
    directory = Path(reference)
    if not directory.is_absolute():
        directory = (bundle / directory).resolve()
    if not (directory / "config.json").is_file():
        raise BundleError(f"{bundle}: backbone directory {directory} holds no transformers config.json")
    return directory


def build_head(config: HFAdapterConfig) -> MLPResNet:
    """The action head: [.., tokens_per_step * D] -> [.., A] per chunk step."""
    width = config.hidden_size * config.action_tokens.tokens_per_step
    return MLPResNet(config.head_blocks, width, config.head_hidden, config.action_dim)


class HFAdapter(nn.Module):
    """Proposer over a transformers backbone; see the module docstring."""

    def __init__(
        self,
        config: HFAdapterConfig,
        backbone: nn.Module,
        head: MLPResNet | None = None,
        stats: NormStats | None = None,
        tokenizer: Any = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.backbone = backbone.eval()
        self.head = (head or build_head(config)).eval()
        self.stats = stats
        self.tokenizer = tokenizer  # a transformers tokenizer when config.tokenizer == "auto"
        bc = getattr(backbone, "config", None)
        hidden = getattr(bc, "hidden_size", None)
        if hidden is not None and hidden != config.hidden_size:
            raise ValueError(
                f"config.hidden_size={config.hidden_size} but the backbone's hidden_size is {hidden}"
            )
        vocab = getattr(bc, "vocab_size", None)
        t = config.action_tokens
        for name, tid in (("token_id", t.token_id), ("trailing_id", t.trailing_id)):
            if vocab is not None and not 0 <= tid < vocab:
                raise ValueError(
                    f"action_tokens.{name}={tid} is outside the backbone's vocabulary [0, {vocab})"
                )
        if config.tokenizer == "byte" and vocab is not None and vocab < VOCAB_SIZE:
            raise ValueError(
                f"tokenizer='byte' needs a vocabulary of >= {VOCAB_SIZE} ids; the backbone has {vocab}"
            )
        if config.tokenizer == "auto" and tokenizer is None:
            raise ValueError("tokenizer='auto' needs the checkpoint's tokenizer (HFAdapter.load finds it)")
        layers = getattr(bc, "num_hidden_layers", None)
        if layers is None:
            raise ValueError(
                "the backbone's config has no num_hidden_layers; cannot describe its layer actions"
            )
        if not -(int(layers) + 1) <= config.context_layer <= int(layers):
            raise ValueError(
                f"context_layer={config.context_layer} must index the backbone's {int(layers) + 1} hidden states"
            )
        self._takes_position_ids = "position_ids" in inspect.signature(backbone.forward).parameters
        self.description = PolicyDescription(
            name=config.name,
            hidden_size=config.hidden_size,
            chunk_len=config.chunk_len,
            action_dim=config.action_dim,
            num_layers=int(layers),
            gripper_dims=config.gripper_dims,
        )

    # ------------------------------------------------------------------ inputs
    def build_inputs(
        self, observations: Sequence[Observation]
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """-> backbone kwargs (input_ids, attention_mask, ...) and valid [B, S] (prompt tokens only)."""
        t = self.config.action_tokens
        prompts = [self._prompt_ids(o, i) for i, o in enumerate(observations)]
        width = max(len(p) for p in prompts)
        s = width + t.count + t.trailing
        ids = torch.full((len(prompts), s), t.trailing_id, dtype=torch.long)
        valid = torch.zeros(len(prompts), s, dtype=torch.bool)
        for i, p in enumerate(prompts):
            ids[i, width - len(p) : width] = torch.tensor(p, dtype=torch.long)  # left padding
            valid[i, width - len(p) : width] = True
        ids[:, width : width + t.count] = t.token_id
        attend = valid.clone()
        attend[:, width:] = True  # the action and trailing tokens see the prompt, causally
        kwargs = {"input_ids": ids, "attention_mask": attend.long()}
        if self._takes_position_ids:  # positions count from the first real token, as in generation
            kwargs["position_ids"] = (attend.long().cumsum(-1) - 1).clamp(min=0)
        return kwargs, valid

    def _prompt_ids(self, obs: Observation, index: int) -> list[int]:
        c = self.config
        text = prompt_text(c.prompt, c.state_in_prompt, obs, index)
        if c.tokenizer == "byte":
            ids = [BOS_ID, *text.encode("utf-8"), EOS_ID]
        else:
            ids = list(self.tokenizer(text, add_special_tokens=True)["input_ids"])
        return ids[-c.max_prompt_len :]

    # ------------------------------------------------------------------ Proposer
    def propose(self, observations: Sequence[Observation]) -> Proposals:
        if len(observations) == 0:
            raise ValueError("propose() needs at least one observation")
        c, t = self.config, self.config.action_tokens
        kwargs, valid = self.build_inputs(observations)
        dev = next(self.head.parameters()).device
        kwargs = {k: v.to(dev) for k, v in kwargs.items()}
        with torch.no_grad():
            out = self.backbone(**kwargs, output_hidden_states=True, return_dict=True)
            hidden = getattr(out, "hidden_states", None)
            if hidden is None:
                raise ValueError("the backbone returned no hidden_states for output_hidden_states=True")
            if len(hidden) != self.description.num_layers + 1:
                raise ValueError(
                    f"the backbone returned {len(hidden)} hidden states; expected num_hidden_layers + 1 = "
                    f"{self.description.num_layers + 1}"
                )
            b, s, d = hidden[-1].shape
            if d != c.hidden_size:
                raise ValueError(
                    f"backbone hidden states are {d} wide; config.hidden_size is {c.hidden_size}"
                )
            start = s - t.trailing - t.count  # first action token
            per_layer = torch.stack(
                [action_token_states(h, start, t.count) for h in hidden[1:]], 1
            )  # [B, L, count, D]
            steps = per_layer.reshape(
                b, per_layer.shape[1], c.chunk_len, t.tokens_per_step * d
            )  # [B, L, H, k*D]
            layer_actions = self.head(steps.float())  # [B, L, H, A]
        return Proposals(
            context=hidden[c.context_layer].float(),
            valid=valid.to(dev),
            layer_actions=layer_actions,
            base=layer_actions[:, -1],
        )

    # ------------------------------------------------------------------ bundles
    def save(self, path: str | Path) -> Path:
        """Write the head, config and statistics; the backbone stays where config.backbone points."""
        return save_bundle(path, KIND, self.config, self.head, stats=self.stats)

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> HFAdapter:
        from transformers import AutoModel, AutoTokenizer

        path = Path(path)
        head, config, stats = load_bundle_with_config(path, KIND, HFAdapterConfig, build_head, map_location=device)
        backbone_dir = resolve_checkpoint(path, config.backbone)
        backbone = AutoModel.from_pretrained(str(backbone_dir), local_files_only=True).to(device)
        tokenizer = None
        if config.tokenizer == "auto":
            tokenizer = AutoTokenizer.from_pretrained(str(backbone_dir), local_files_only=True)
        return cls(config, backbone, head, stats, tokenizer)
