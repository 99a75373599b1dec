"""ImageVLA: any image-text transformers checkpoint + an L1 action head, read the OpenVLA-OFT way.

A directory `transformers.AutoModelForImageTextToText` loads (PaliGemma, SmolVLM / Idefics3,
Qwen2.5-VL, ...) together with its own processor (`AutoProcessor`) becomes a Proposer:
- the prompt per observation is `image_text` once per camera, then the instruction in `prompt`
  (OpenVLA's by default; with `state_in_prompt`, the proprio state written as numbers), and the
  processor turns it and the camera images into the model's inputs, left-padded so that every
  row ends at the same column;
- `action_tokens.count` placeholder tokens (then `trailing` tokens, OFT's stop token) are
  appended; they attend to everything before them (PaliGemma: as its causal suffix);
- the L1 head (MLPResNet) reads the hidden states OpenVLA-OFT reads: one position left of the
  placeholders, from the last prompt token on (`hf_adapter.action_token_states`), at every
  layer, giving one chunk per layer ("layer actions"; the last layer's is the policy's own);
- the energy head's context is the hidden states at `context_layer` over the image and prompt
  tokens (placeholders and padding invalid).
Positions are left to the model: its rotary embeddings see only relative positions, which left
padding does not change. Nothing is downloaded and no code from the checkpoint runs.

Bundle (kind "image_vla"): config.json (ImageVLAConfig), model.safetensors (the action head),
stats.json; `checkpoint` points at the transformers directory, relative to the bundle or absolute.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from energy_rerank.checkpoint import BundleError, load_bundle_with_config, save_bundle
from energy_rerank.nn import MLPResNet
from energy_rerank.normalize import NormStats
from energy_rerank.policy.base import Observation, PolicyDescription, Proposals
from energy_rerank.policy.hf_adapter import ActionTokens, action_token_states, prompt_text, resolve_checkpoint

KIND = "image_vla"
OFT_PROMPT = "In: What action should the robot take to {instruction}?\nOut:"


@dataclass(frozen=True)
class ImageVLAConfig:
    """An image-text checkpoint, where its action head reads, and what the robot sends."""

    checkpoint: str  # transformers directory with model and processor (relative to the bundle, or absolute)
    hidden_size: int  # D of the language model (checked against the checkpoint)
    num_layers: int  # L: language-model layers = layer-action chunks (checked against the checkpoint)
    chunk_len: int = 8  # H: steps per chunk
    action_dim: int = 7  # A: action dims per step (normalised space)
    action_tokens: ActionTokens = field(default_factory=ActionTokens)  # placeholders the head reads beside
    head_blocks: int = 2  # MLPResNet blocks of the action head
    head_hidden: int = 256  # MLPResNet width of the action head
    cameras: tuple[str, ...] = ("agentview",)  # Observation.images names, in prompt order
    image_size: tuple[int, int] = (224, 224)  # (h, w) the robot renders images at (the processor resizes)
    image_text: str = "<image>"  # the processor's image placeholder, written once per camera
    prompt: str = OFT_PROMPT  # must contain {instruction}
    state_in_prompt: bool = False  # append "state: v0 v1 ..." (lowdim then proprio, 3 decimals)
    state_dim: int = 0  # proprio dims the robot sends (read only with state_in_prompt)
    lowdim_dim: int = 0  # low-dim scene-state dims the robot sends (read only with state_in_prompt)
    context_layer: int = -1  # hidden state the energy head reads: 0 = embeddings, l = layer l, -1 = last
    gripper_dims: tuple[int, ...] = (6,)  # binary action dims
    name: str = "image-vla"  # reported in PolicyDescription

    def __post_init__(self) -> None:
        self.action_tokens.check(self.chunk_len)
        if not self.cameras:
            raise ValueError("cameras must name at least one camera: an image VLA reads images")
        if "{instruction}" not in self.prompt:
            raise ValueError("prompt must contain '{instruction}'")
        if self.state_in_prompt and not (self.state_dim or self.lowdim_dim):
            raise ValueError("state_in_prompt needs state_dim or lowdim_dim > 0")
        if any(not 0 <= d < self.action_dim for d in self.gripper_dims):
            raise ValueError(f"gripper_dims {self.gripper_dims} must lie in [0, {self.action_dim})")


def build_head(config: ImageVLAConfig) -> MLPResNet:
    """The L1 action head: [.., tokens_per_step * D] -> [.., A] per chunk step."""
    width = config.hidden_size * config.action_tokens.tokens_per_step
    return MLPResNet(config.head_blocks, width, config.head_hidden, config.action_dim)


def checkpoint_problems(config: ImageVLAConfig, hf: Any) -> list[str]:
    """Where an ImageVLAConfig disagrees with a checkpoint's config, one line per field (empty: fits)."""
    text = hf.get_text_config()
    layers, vocab = int(text.num_hidden_layers), int(text.vocab_size)
    problems = []
    if config.hidden_size != text.hidden_size:
        problems.append(f"hidden_size={config.hidden_size} but the language model's hidden_size is {text.hidden_size}")
    if config.num_layers != layers:
        problems.append(f"num_layers={config.num_layers} but the language model has {layers} layers")
    t = config.action_tokens
    for name, tid in (("token_id", t.token_id), ("trailing_id", t.trailing_id)):
        if not 0 <= tid < vocab:
            problems.append(f"action_tokens.{name}={tid} is outside the vocabulary [0, {vocab})")
    if not -(layers + 1) <= config.context_layer <= layers:
        problems.append(f"context_layer={config.context_layer} must index the {layers + 1} hidden states")
    return problems


class ImageVLA(nn.Module):
    """Proposer over an image-text transformers model; see the module docstring."""

    model: Any  # an AutoModelForImageTextToText model

    def __init__(
        self, config: ImageVLAConfig, model: Any, processor: Any, head: MLPResNet | None = None,
        stats: NormStats | None = None,
    ) -> None:  # fmt: skip
        super().__init__()
        problems = checkpoint_problems(config, model.config)
        if problems:
            raise ValueError("the checkpoint does not fit the bundle config: " + "; ".join(problems))
        if stats is not None and stats.action.dim != config.action_dim:
            raise ValueError(f"stats.json has {stats.action.dim} action dims, action_dim is {config.action_dim}")
        self.config = config
        self.model = model.eval()
        self.processor = processor
        self.processor.tokenizer.padding_side = "left"  # every prompt ends where the placeholders begin
        self.head = (head or build_head(config)).eval()
        self.stats = stats
        self.description = PolicyDescription(
            name=config.name,
            hidden_size=config.hidden_size,
            chunk_len=config.chunk_len,
            action_dim=config.action_dim,
            num_layers=config.num_layers,
            cameras=tuple(config.cameras),
            image_size=tuple(config.image_size),  # type: ignore[arg-type]
            state_dim=config.state_dim if config.state_in_prompt else 0,
            lowdim_dim=config.lowdim_dim if config.state_in_prompt else 0,
            gripper_dims=tuple(config.gripper_dims),
        )

    # ------------------------------------------------------------------ inputs
    def build_inputs(self, observations: Sequence[Observation]) -> tuple[dict[str, torch.Tensor], torch.Tensor, int]:
        """-> model kwargs (the processor's, placeholders appended), valid [B, S] (image and prompt
        tokens) and the position of the first placeholder."""
        c, t = self.config, self.config.action_tokens
        texts, images = [], []
        for i, o in enumerate(observations):
            per_obs = []
            for cam in c.cameras:
                img = o.images.get(cam)
                if img is None:
                    raise ValueError(f"observation {i}: camera {cam!r} is missing; this policy reads {tuple(c.cameras)}")
                arr = np.asarray(img)
                if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
                    raise ValueError(f"observation {i}: images[{cam!r}] must be uint8 [h, w, 3], got {arr.dtype} {arr.shape}")
                per_obs.append(arr)
            images.append(per_obs)
            texts.append(c.image_text * len(c.cameras) + prompt_text(c.prompt, c.state_in_prompt, o, i))
        enc = dict(self.processor(images=images, text=texts, padding="longest", return_tensors="pt"))
        enc.pop("labels", None)  # PaliGemma's processor adds training labels
        ids = enc["input_ids"]
        b, first = ids.shape
        extra = torch.tensor([t.token_id] * t.count + [t.trailing_id] * t.trailing, dtype=ids.dtype)
        fill = {"input_ids": extra, "attention_mask": 1, "token_type_ids": 1}  # PaliGemma: 1 = causal suffix
        for key, value in list(enc.items()):
            if isinstance(value, torch.Tensor) and value.shape == (b, first):
                tail = torch.as_tensor(fill.get(key, 0), dtype=value.dtype).expand(b, len(extra))
                enc[key] = torch.cat([value, tail], 1)
        valid = torch.cat([enc["attention_mask"][:, :first].bool(), torch.zeros(b, len(extra), dtype=torch.bool)], 1)
        return enc, valid, first

    # ------------------------------------------------------------------ Proposer
    def propose(self, observations: Sequence[Observation]) -> Proposals:
        if len(observations) == 0:
            raise ValueError("propose() needs at least one observation")
        c, t = self.config, self.config.action_tokens
        kwargs, valid, first = self.build_inputs(observations)
        dev = next(self.head.parameters()).device
        dtype = next(self.model.parameters()).dtype
        kwargs = {k: v.to(dev, dtype) if v.is_floating_point() else v.to(dev) for k, v in kwargs.items()}
        with torch.no_grad():
            hidden = self.hidden_states(kwargs)
            b, _, d = hidden[-1].shape
            per_layer = torch.stack([action_token_states(h, first, t.count) for h in hidden[1:]], 1)  # [B, L, count, D]
            steps = per_layer.reshape(b, c.num_layers, c.chunk_len, t.tokens_per_step * d)  # [B, L, H, k*D]
            layer_actions = self.head(steps.float())  # [B, L, H, A]
        return Proposals(
            context=hidden[c.context_layer].float(),
            valid=valid.to(dev),
            layer_actions=layer_actions,
            base=layer_actions[:, -1],
        )

    def hidden_states(self, kwargs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
        """The language model's L + 1 hidden states [B, S, D] (no LM head: its logits are not needed)."""
        base = getattr(self.model, "model", self.model)
        out = base(**kwargs, output_hidden_states=True, return_dict=True)
        hidden = getattr(out, "hidden_states", None)
        if hidden is None or len(hidden) != self.config.num_layers + 1:
            got = None if hidden is None else len(hidden)
            raise ValueError(f"the model returned {got} hidden states; expected num_layers + 1 = {self.config.num_layers + 1}")
        return tuple(hidden)

    # ------------------------------------------------------------------ bundles
    def save(self, path: str | Path) -> Path:
        return write_bundle(path, self.config, self.head, self.stats)

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> ImageVLA:
        path = Path(path)
        head, config, stats = load_bundle_with_config(path, KIND, ImageVLAConfig, build_head, map_location=device)
        model, processor = load_checkpoint(resolve_checkpoint(path, config.checkpoint), device)
        try:
            return cls(config, model, processor, head, stats)
        except ValueError as e:
            raise BundleError(f"{path}: {e}") from e


def write_bundle(path: str | Path, config: ImageVLAConfig, head: MLPResNet, stats: NormStats | None) -> Path:
    """Write the head, config and statistics; the checkpoint stays where config.checkpoint points."""
    return save_bundle(path, KIND, config, head, stats=stats)


def read_checkpoint_config(directory: str | Path) -> Any:
    """The checkpoint's transformers config (config.json only: nothing is loaded)."""
    from transformers import AutoConfig

    directory = Path(directory)
    if not (directory / "config.json").is_file():
        raise BundleError(f"{directory} holds no transformers config.json")
    return AutoConfig.from_pretrained(str(directory), local_files_only=True)


def load_checkpoint(directory: Path, device: str | torch.device) -> tuple[Any, Any]:
    """The image-text model and its processor from a local directory, offline."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model: Any = AutoModelForImageTextToText.from_pretrained(str(directory), local_files_only=True)
    processor = AutoProcessor.from_pretrained(str(directory), local_files_only=True)
    return model.to(device).eval(), processor
