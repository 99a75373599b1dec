"""PI0Proposer: a transformers pi0 checkpoint on local disk as a sampling Proposer.

pi0 (`transformers.PI0ForConditionalGeneration`) reads camera images, the instruction and the
robot's proprio state through a PaliGemma VLM (the "prefix"), then integrates a flow-matching
velocity field from Gaussian noise to an action chunk with its action expert, attending to the
prefix's KV cache. A different noise gives a different chunk: the policy's own candidates.

Candidates: M draws per observation share **one** prefix pass. The VLM runs once per
observation, its KV cache is expanded to the M draws, and the M denoising trajectories run as
one batch; the result equals M separate `sample_actions` calls with the same noises. Draw j of
observation i starts from noise that depends only on (seeds[i], j), drawn in fixed blocks, so the
first k of M draws are the k draws, and draw 0 is what the policy alone would act on with that
seed. `propose()` without a seed draws `config.draws` chunks with `config.seed` (what
`cache-features` stores as the alternatives the head learns to rank).

Energy-head context: the prefix's hidden states at `context_layer` (images, then the prompt),
valid where the prompt is not padding. pi0 pads actions to max_action_dim (32) and predicts
chunk_size (50) steps: the robot's `action_dim` dims of the first `chunk_len` steps are kept.
Actions are in pi0's normalised space; the bundle's stats.json maps them to robot units (pi0
normalises with mean/std) and normalises the state, which is then zero-padded to max_state_dim.

Inputs are built as `PI0Processor` builds them (image tokens of every camera, the tokenizer's
BOS, the prompt, a newline, right-padded to `max_prompt_len`), with the checkpoint's own
tokenizer; images are resized to the vision tower's input size and scaled to [-1, 1] (pi0's
image mean and std are 0.5) in torch, so no torchvision is needed.

Bundle (kind "pi0"): config.json (Pi0Config), an empty model.safetensors (the weights stay in
the checkpoint directory `checkpoint` points at, relative to the bundle or absolute), stats.json.
Nothing is downloaded and no code from the checkpoint runs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from energy_rerank.checkpoint import BundleError, load_bundle_with_config, save_bundle
from energy_rerank.normalize import NormStats
from energy_rerank.policy.base import Observation, PolicyDescription, Proposals
from energy_rerank.policy.hf_adapter import resolve_checkpoint
from energy_rerank.policy.vision import images_to_tensor

KIND = "pi0"
DRAW_BLOCK = 16  # draw noises are generated this many at a time: drawing more never changes the first
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class Pi0Config:
    """A pi0 checkpoint, what the robot reads from it, and how candidates are drawn."""

    checkpoint: str  # transformers pi0 directory (relative to the bundle directory, or absolute)
    hidden_size: int  # D: width of the VLM prefix's hidden states (checked against the checkpoint)
    chunk_len: int  # H: steps the robot executes, the first H of the checkpoint's chunk_size
    action_dim: int = 7  # A: robot action dims, the first A of the checkpoint's max_action_dim
    state_dim: int = 8  # P: proprio dims read from Observation.state (0 = none; zero-padded)
    cameras: tuple[str, ...] = ("agentview", "eye_in_hand")  # Observation.images names, in order
    image_size: tuple[int, int] = (224, 224)  # (h, w) of the vision tower's input (checked)
    context_layer: int = -1  # prefix hidden state the energy head reads: 0 = embeddings, -1 = last layer
    num_steps: int = 10  # flow-matching integration steps per draw (the checkpoint's num_inference_steps)
    draws: int = 16  # draws per observation when no count is asked (propose(): cache-features)
    seed: int = 0  # seed of those draws: the policy alone is deterministic
    prompt: str = "{instruction}"  # text after the image tokens and BOS
    max_prompt_len: int = 48  # text tokens, right-padded to this length (PI0Processor's max_length)
    dtype: Literal["float32", "bfloat16"] = "float32"  # weights and activations
    gripper_dims: tuple[int, ...] = (6,)  # binary action dims
    name: str = "pi0"  # reported in PolicyDescription

    def __post_init__(self) -> None:
        for name in ("hidden_size", "chunk_len", "action_dim", "num_steps", "draws", "max_prompt_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.state_dim < 0:
            raise ValueError(f"state_dim must be >= 0, got {self.state_dim}")
        if not self.cameras:
            raise ValueError("cameras must name at least one camera: pi0 reads images")
        if len(self.image_size) != 2 or min(self.image_size) < 1:
            raise ValueError(f"image_size must be (height, width), got {self.image_size}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")
        if "{instruction}" not in self.prompt:
            raise ValueError("prompt must contain '{instruction}'")
        if any(not 0 <= d < self.action_dim for d in self.gripper_dims):
            raise ValueError(f"gripper_dims {self.gripper_dims} must lie in [0, {self.action_dim})")


def checkpoint_problems(config: Pi0Config, hf: Any) -> list[str]:
    """Where a Pi0Config disagrees with a checkpoint's PI0Config, one line per field (empty: fits)."""
    text, vision = hf.vlm_config.text_config, hf.vlm_config.vision_config
    layers = int(text.num_hidden_layers)
    problems = []
    if config.hidden_size != text.hidden_size:
        problems.append(f"hidden_size={config.hidden_size} but the VLM's hidden_size is {text.hidden_size}")
    if config.chunk_len > hf.chunk_size:
        problems.append(f"chunk_len={config.chunk_len} exceeds the checkpoint's chunk_size {hf.chunk_size}")
    if config.action_dim > hf.max_action_dim:
        problems.append(f"action_dim={config.action_dim} exceeds the checkpoint's max_action_dim {hf.max_action_dim}")
    if config.state_dim > hf.max_state_dim:
        problems.append(f"state_dim={config.state_dim} exceeds the checkpoint's max_state_dim {hf.max_state_dim}")
    if tuple(config.image_size) != (vision.image_size, vision.image_size):
        problems.append(f"image_size={tuple(config.image_size)} but the vision tower reads {vision.image_size}")
    if not -(layers + 1) <= config.context_layer <= layers:
        problems.append(f"context_layer={config.context_layer} must index the VLM's {layers + 1} hidden states")
    return problems


def draw_seed(seed: int) -> int:
    """The noise stream of a request's draws: distinct from the CandidateSampler's stream of the same seed."""
    return (int(seed) * 6364136223846793005 + 1442695040888963407) % 2**63


class PI0Proposer(nn.Module):
    """DrawingProposer over a transformers pi0; see the module docstring."""

    model: Any  # PI0ForConditionalGeneration
    hf: Any  # its PI0Config

    def __init__(self, config: Pi0Config, model: Any, tokenizer: Any, stats: NormStats | None = None) -> None:
        super().__init__()
        hf = model.config
        problems = checkpoint_problems(config, hf)
        if problems:
            raise ValueError("the pi0 checkpoint does not fit the bundle config: " + "; ".join(problems))
        if stats is not None and stats.action.dim != config.action_dim:
            raise ValueError(f"stats.json has {stats.action.dim} action dims, action_dim is {config.action_dim}")
        if config.state_dim and (stats is None or stats.state is None or stats.state.dim != config.state_dim):
            have = None if stats is None or stats.state is None else stats.state.dim
            raise ValueError(f"state_dim={config.state_dim} needs state statistics of that width; stats.json has {have}")
        self.config = config
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.stats = stats
        self.hf = hf
        self.dtype = DTYPES[config.dtype]
        vision = hf.vlm_config.vision_config
        self.tokens_per_image = (vision.image_size // vision.patch_size) ** 2
        self.image_token_id = int(hf.vlm_config.image_token_id)
        self.description = PolicyDescription(
            name=config.name,
            hidden_size=config.hidden_size,
            chunk_len=config.chunk_len,
            action_dim=config.action_dim,
            num_layers=0,  # no layer actions: a flow-matching policy's alternatives are its draws
            cameras=tuple(config.cameras),
            image_size=tuple(config.image_size),  # type: ignore[arg-type]
            state_dim=config.state_dim,
            gripper_dims=tuple(config.gripper_dims),
        )

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # ------------------------------------------------------------------ inputs
    def build_inputs(self, observations: Sequence[Observation]) -> dict[str, torch.Tensor]:
        """-> `sample_actions` keyword arguments: input_ids, attention_mask [B, S], pixel_values
        [B, C, 3, h, w], pixel_attention_mask [B, C], state [B, max_state_dim] (normalised, padded)."""
        c, tok = self.config, self.tokenizer
        prompts = [c.prompt.format(instruction=o.instruction.strip().lower().rstrip(".")) for o in observations]
        text = tok([f"{tok.bos_token or ''}{p}\n" for p in prompts], add_special_tokens=False)["input_ids"]
        width = self.tokens_per_image * len(c.cameras) + c.max_prompt_len
        ids = torch.full((len(observations), width), int(tok.pad_token_id or 0), dtype=torch.long)
        mask = torch.zeros(len(observations), width, dtype=torch.long)
        for i, t in enumerate(text):
            row = [self.image_token_id] * (width - c.max_prompt_len) + list(t)[: c.max_prompt_len]
            ids[i, : len(row)] = torch.tensor(row)
            mask[i, : len(row)] = 1
        pixels = images_to_tensor([o.images for o in observations], c.cameras, tuple(c.image_size))  # type: ignore[arg-type]
        state = torch.zeros(len(observations), self.hf.max_state_dim)
        if c.state_dim:
            for i, o in enumerate(observations):
                if o.state is None or np.asarray(o.state).size != c.state_dim:
                    got = None if o.state is None else np.asarray(o.state).size
                    raise ValueError(f"observation {i}: state must have {c.state_dim} values, got {got}")
            raw = torch.from_numpy(np.stack([np.asarray(o.state, np.float32).reshape(-1) for o in observations]))
            state[:, : c.state_dim] = self.stats.normalize_state(raw) if self.stats is not None else raw
        dev = self.device
        return {
            "input_ids": ids.to(dev),
            "attention_mask": mask.to(dev),
            "pixel_values": pixels.to(dev, self.dtype),  # [B, C, 3, h, w] in [-1, 1]
            "pixel_attention_mask": torch.ones(len(observations), len(c.cameras), dtype=torch.bool, device=dev),
            "state": state.to(dev, self.dtype),
        }

    def draw_noise(self, seeds: Sequence[int], num_draws: int) -> torch.Tensor:
        """-> [B, M, chunk_size, max_action_dim] starting noise of every draw (float32, CPU)."""
        shape = (DRAW_BLOCK, self.hf.chunk_size, self.hf.max_action_dim)
        rows = []
        for seed in seeds:
            gen = torch.Generator().manual_seed(draw_seed(seed))
            blocks = [torch.randn(shape, generator=gen) for _ in range(math.ceil(num_draws / DRAW_BLOCK))]
            rows.append(torch.cat(blocks)[:num_draws])
        return torch.stack(rows)

    # ------------------------------------------------------------------ Proposer
    def propose(self, observations: Sequence[Observation]) -> Proposals:
        return self.propose_draws(observations, self.config.draws, [self.config.seed] * len(observations))

    @torch.no_grad()
    def propose_draws(self, observations: Sequence[Observation], num_draws: int, seeds: Sequence[int]) -> Proposals:
        if len(observations) == 0:
            raise ValueError("propose() needs at least one observation")
        if len(seeds) != len(observations):
            raise ValueError(f"{len(observations)} observations but {len(seeds)} seeds")
        inputs = self.build_inputs(observations)
        noise = self.draw_noise(seeds, num_draws).to(self.device, self.dtype)  # [B, M, T, 32]
        context, valid, actions = self.sample_shared(inputs, noise)
        c = self.config
        draws = actions[:, :, : c.chunk_len, : c.action_dim].float()  # [B, M, H, A]
        b = len(observations)
        return Proposals(
            context=context.float(),
            valid=valid,
            layer_actions=draws.new_zeros(b, 0, c.chunk_len, c.action_dim),  # [B, 0, H, A]
            base=draws[:, 0],
            draws=draws,
        )

    def sample_shared(
        self, inputs: dict[str, torch.Tensor], noise: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One prefix pass for B observations, M denoising trajectories each:
        noise [B, M, T, 32] -> (context [B, S, D], valid [B, S], actions [B, M, T, 32])."""
        model, mask = self.model, inputs["attention_mask"]
        b, m = noise.shape[:2]
        embeds = model.model.embed_prefix(inputs["input_ids"], inputs["pixel_values"], inputs["pixel_attention_mask"])
        prefix = model.model.vlm(
            inputs_embeds=embeds,
            attention_mask=mask,
            position_ids=mask.cumsum(-1) - 1,
            token_type_ids=torch.zeros_like(mask),  # the whole prefix attends bidirectionally
            use_cache=True,
            output_hidden_states=True,
        )
        cache = prefix.cache
        cache.batch_repeat_interleave(m)  # every draw reads the same prefix keys/values
        prefix_len = cache.get_seq_length()
        state = inputs["state"].repeat_interleave(m, 0)  # [B*M, 32]
        mask_m = mask.repeat_interleave(m, 0)  # [B*M, S]
        x = noise.flatten(0, 1)  # [B*M, T, 32]
        dt = -1.0 / self.config.num_steps
        for step in range(self.config.num_steps):  # Euler from t = 1 (noise) to t = 0 (actions), as sample_actions
            t = torch.full((b * m,), 1.0 + step * dt, dtype=torch.float32, device=x.device)
            velocity = model(state=state, noise=x, timestep=t, attention_mask=mask_m, cache=cache).logits
            cache.crop(prefix_len - cache.get_seq_length())  # keep only the prefix for the next step
            x = x + dt * velocity
        context = prefix.hidden_states[self.config.context_layer]  # [B, S, D]
        return context, mask.bool(), x.view(b, m, *x.shape[1:])

    # ------------------------------------------------------------------ bundles
    def save(self, path: str | Path) -> Path:
        return write_bundle(path, self.config, self.stats)

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> PI0Proposer:
        path = Path(path)
        # The bundle holds no weights of its own (the checkpoint has them): an empty module checks that.
        _, config, stats = load_bundle_with_config(path, KIND, Pi0Config, lambda _: nn.Module(), map_location=device)
        model, tokenizer = load_checkpoint(resolve_checkpoint(path, config.checkpoint), config.dtype, device)
        try:
            return cls(config, model, tokenizer, stats)
        except ValueError as e:
            raise BundleError(f"{path}: {e}") from e


def write_bundle(path: str | Path, config: Pi0Config, stats: NormStats | None) -> Path:
    """Write config and statistics; the weights stay where config.checkpoint points."""
    return save_bundle(path, KIND, config, nn.Module(), stats=stats)


def read_checkpoint_config(directory: str | Path) -> Any:
    """The checkpoint's PI0Config (config.json only: nothing is loaded)."""
    from transformers import PI0Config

    directory = Path(directory)
    if not (directory / "config.json").is_file():
        raise BundleError(f"{directory} holds no transformers config.json")
    hf = PI0Config.from_pretrained(str(directory), local_files_only=True)
    if getattr(hf, "model_type", None) != "pi0":
        raise BundleError(f"{directory}: model_type is {hf.model_type!r}, expected 'pi0'")
    return hf


def load_checkpoint(directory: Path, dtype: str, device: str | torch.device) -> tuple[Any, Any]:
    """PI0ForConditionalGeneration and its tokenizer from a local directory, offline."""
    from transformers import AutoTokenizer, PI0ForConditionalGeneration

    read_checkpoint_config(directory)
    model: Any = PI0ForConditionalGeneration.from_pretrained(str(directory), local_files_only=True, dtype=DTYPES[dtype])
    tokenizer = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
    return model.to(device).eval(), tokenizer
