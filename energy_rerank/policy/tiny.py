"""Tiny random checkpoints of real architectures on local disk: pi0, PaliGemma, Idefics3 (SmolVLM).

Each writes what a real checkpoint directory holds (config.json, model.safetensors, tokenizer,
processor files), with random weights and a byte-level tokenizer built here, so the policy
kinds, the bundle commands, tests and benchmarks run without a download. A real checkpoint
directory goes through the same code.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

SPECIALS = ("<pad>", "<bos>", "<eos>", "<unk>")


def byte_tokenizer(extra_special: Sequence[str] = ()) -> Any:
    """A fast tokenizer over the 256 bytes (no merges) plus pad/bos/eos/unk and `extra_special`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {ch: i for i, ch in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    for s in SPECIALS:
        vocab[s] = len(vocab)
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>"
    )
    if extra_special:
        tok.add_special_tokens({"additional_special_tokens": list(extra_special)})
    return tok


def _gemma(hidden: int, layers: int, vocab: int) -> dict[str, Any]:
    return {"model_type": "gemma", "hidden_size": hidden, "num_hidden_layers": layers, "intermediate_size": 2 * hidden,
            "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": hidden // 2, "vocab_size": vocab}  # fmt: skip


def _siglip(hidden: int, image_size: int, patch: int) -> dict[str, Any]:
    return {"model_type": "siglip_vision_model", "hidden_size": hidden, "intermediate_size": 2 * hidden,
            "patch_size": patch, "image_size": image_size, "num_hidden_layers": 1, "num_attention_heads": 2,
            "vision_use_head": False}  # fmt: skip


def write_tiny_pi0(
    directory: str | Path,
    hidden: int = 32,
    layers: int = 2,
    image_size: int = 32,
    patch: int = 8,
    chunk_size: int = 10,
    steps: int = 3,
    seed: int = 0,
) -> Path:
    """A PI0ForConditionalGeneration (PaliGemma prefix + Gemma action expert) and its tokenizer."""
    from transformers import PI0Config, PI0ForConditionalGeneration

    tok = byte_tokenizer(["<image>"])
    vocab = len(tok)
    cfg = PI0Config(
        vlm_config={"model_type": "paligemma", "text_config": _gemma(hidden, layers, vocab),
                    "vision_config": _siglip(hidden, image_size, patch), "projection_dim": hidden,
                    "image_token_id": tok.convert_tokens_to_ids("<image>")},
        dit_config={k: v for k, v in _gemma(hidden, layers, vocab).items() if k != "vocab_size"},
        chunk_size=chunk_size, num_inference_steps=steps,
    )  # fmt: skip
    torch.manual_seed(seed)
    directory = Path(directory)
    PI0ForConditionalGeneration(cfg).save_pretrained(directory)
    tok.save_pretrained(directory)
    return directory


def write_tiny_paligemma(
    directory: str | Path, hidden: int = 32, layers: int = 2, image_size: int = 32, patch: int = 8, seed: int = 0
) -> Path:
    """A PaliGemmaForConditionalGeneration and its PaliGemmaProcessor (PIL image processor)."""
    from transformers import PaliGemmaConfig, PaliGemmaForConditionalGeneration, PaliGemmaProcessor
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

    tokens = (image_size // patch) ** 2
    images = SiglipImageProcessorPil(size={"height": image_size, "width": image_size}, image_seq_length=tokens)
    processor = PaliGemmaProcessor(image_processor=images, tokenizer=byte_tokenizer())
    vocab = len(processor.tokenizer)
    cfg = PaliGemmaConfig(
        text_config=_gemma(hidden, layers, vocab), vision_config=_siglip(hidden, image_size, patch),
        projection_dim=hidden, image_token_index=processor.image_token_id, vocab_size=vocab,
    )  # fmt: skip
    torch.manual_seed(seed)
    directory = Path(directory)
    PaliGemmaForConditionalGeneration(cfg).save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory


def write_tiny_idefics3(
    directory: str | Path, hidden: int = 32, layers: int = 2, image_size: int = 32, patch: int = 8, seed: int = 0
) -> Path:
    """An Idefics3ForConditionalGeneration (SmolVLM's architecture: SigLIP + pixel shuffle + Llama)
    and its Idefics3Processor (PIL image processor, no image splitting)."""
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration, Idefics3Processor
    from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil

    tok = byte_tokenizer(["<fake_token_around_image>", "<image>", "<end_of_utterance>", "<global-img>"])
    scale = 2  # pixel shuffle: (image_size / patch)^2 patches -> / scale^2 image tokens
    images = Idefics3ImageProcessorPil(
        do_image_splitting=False, size={"longest_edge": image_size}, max_image_size={"longest_edge": image_size}
    )
    processor = Idefics3Processor(image_processor=images, tokenizer=tok, image_seq_len=(image_size // patch // scale) ** 2)
    vocab = len(tok)
    text = {"model_type": "llama", "hidden_size": hidden, "num_hidden_layers": layers, "intermediate_size": 2 * hidden,
            "num_attention_heads": 2, "num_key_value_heads": 1, "vocab_size": vocab, "pad_token_id": tok.pad_token_id}  # fmt: skip
    vision = {"hidden_size": hidden, "intermediate_size": 2 * hidden, "patch_size": patch, "image_size": image_size,
              "num_hidden_layers": 1, "num_attention_heads": 2}  # fmt: skip
    cfg = Idefics3Config(text_config=text, vision_config=vision, scale_factor=scale,
                         image_token_id=tok.convert_tokens_to_ids("<image>"))  # fmt: skip
    torch.manual_seed(seed)
    directory = Path(directory)
    Idefics3ForConditionalGeneration(cfg).save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory


def write_tiny_demos(
    path: str | Path, image_size: int = 32, episodes: int = 2, steps: int = 24, seed: int = 0
) -> Path:
    """LIBERO-format demos (robomimic HDF5) with both cameras at `image_size`, random but smooth
    actions (gripper +-1) and proprio: what `energy-rerank libero demos --image-size N` writes, small."""
    import numpy as np

    from energy_rerank.rollouts.episode import Episode
    from energy_rerank.rollouts.hdf5 import write_hdf5

    rng = np.random.default_rng(seed)
    eps = []
    for e in range(episodes):
        actions = np.clip(np.cumsum(rng.normal(0, 0.1, (steps, 7)), 0), -1, 1).astype(np.float32)
        actions[:, 6] = np.where(np.arange(steps) < steps // 2, -1.0, 1.0)
        obs: dict[str, np.ndarray] = {
            "ee_pos": rng.normal(0, 0.1, (steps, 3)).astype(np.float32),
            "ee_ori": rng.normal(0, 0.1, (steps, 3)).astype(np.float32),
            "gripper_states": rng.uniform(0, 0.04, (steps, 2)).astype(np.float32),
            "agentview_rgb": rng.integers(0, 256, (steps, image_size, image_size, 3), dtype=np.uint8),
            "eye_in_hand_rgb": rng.integers(0, 256, (steps, image_size, image_size, 3), dtype=np.uint8),
        }
        eps.append(Episode(actions=actions, obs=obs, instruction="pick up the black bowl and place it on the plate",
                           task="libero_tiny/0", name=f"demo_{e}"))  # fmt: skip
    return write_hdf5(path, eps)
