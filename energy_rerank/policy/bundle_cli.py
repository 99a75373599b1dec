"""`energy-rerank policy-bundle pi0|image-vla`: a local checkpoint directory -> a policy bundle.

    energy-rerank policy-bundle pi0 --checkpoint ckpt/pi0_libero --stats norm_stats.json --out runs/pi0
    energy-rerank policy-bundle image-vla --checkpoint ckpt/smolvlm --data runs/libero/object --out runs/vla

The bundle points at the checkpoint (its weights are not copied) and holds the normalisation
statistics, from a file (this project's stats.json, or openpi's norm_stats.json) or computed
from --data. Every value not given is read from the checkpoint's config; every value given is
checked against it, and a mismatch is refused with a message naming the field.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from energy_rerank.cli import DATA_HELP, HelpFormatter, int_list
from energy_rerank.normalize import ArrayStats, NormStats


class BundleArgumentError(ValueError):
    """A flag that does not fit the checkpoint or the statistics; the message names it."""


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "policy-bundle",
        help="turn a local pi0 or image-text checkpoint into a policy bundle",
        description=(
            "Write a policy bundle (the directory `serve --policy`, `cache-features --policy` and `eval offline` "
            "load) from a transformers checkpoint directory on local disk. The bundle points at the checkpoint "
            "and records the statistics actions and state are normalised with."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="family", metavar="FAMILY", required=True)

    pi0 = sub.add_parser(
        "pi0", help="a transformers pi0 checkpoint (flow matching; candidates are its own draws)",
        description="A PI0ForConditionalGeneration directory with its tokenizer -> a bundle of kind pi0.",
        formatter_class=HelpFormatter,
    )  # fmt: skip
    _common(pi0)
    pi0.add_argument("--state-dim", type=int, default=8, help="proprio dims the robot sends (0 = none)")
    pi0.add_argument("--cameras", nargs="+", default=["agentview", "eye_in_hand"], help="camera names, in the checkpoint's order")
    pi0.add_argument("--num-steps", type=int, help="flow-matching steps per draw (default: the checkpoint's num_inference_steps)")
    pi0.add_argument("--draws", type=int, default=16, help="draws per observation cache-features stores")
    pi0.add_argument("--max-prompt-len", type=int, default=48, help="prompt tokens (right-padded)")
    pi0.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32", help="weights and activations")
    pi0.add_argument("--action-norm", choices=("meanstd", "bounds"), default="meanstd",
                     help="how --data statistics normalise actions (pi0 trains on mean/std)")  # fmt: skip
    pi0.set_defaults(func=run_pi0)

    vla = sub.add_parser(
        "image-vla", help="an image-text checkpoint (PaliGemma, SmolVLM/Idefics3, ...) + an L1 action head, OpenVLA-OFT style",
        description=(
            "An AutoModelForImageTextToText directory with its processor -> a bundle of kind image_vla. The action "
            "head is read from --head (safetensors, MLPResNet names as OpenVLA-OFT's) or initialised at random."
        ),
        formatter_class=HelpFormatter,
    )  # fmt: skip
    _common(vla)
    vla.add_argument("--num-layers", type=int, help="language-model layers (default: the checkpoint's; checked)")
    vla.add_argument("--cameras", nargs="+", default=["agentview"], help="camera names, in prompt order")
    vla.add_argument("--image-size", type=int, nargs=2, metavar=("H", "W"),
                     help="size the robot renders images at (default: the vision tower's)")  # fmt: skip
    vla.add_argument("--tokens-per-step", type=int, default=1, help="placeholders per chunk step (OpenVLA-OFT: one per action dim)")
    vla.add_argument("--token-id", type=int, help="input id of the placeholders (default: the tokenizer's pad id)")
    vla.add_argument("--trailing", type=int, default=1, help="tokens after the placeholders (OpenVLA-OFT: 1, its stop token)")
    vla.add_argument("--trailing-id", type=int, help="their input id (default: the tokenizer's eos id)")
    vla.add_argument("--head", type=Path, help="action head weights (.safetensors); none = random (seeded by --seed)")
    vla.add_argument("--head-hidden", type=int, default=256, help="MLPResNet width of the action head")
    vla.add_argument("--head-blocks", type=int, default=2, help="MLPResNet blocks of the action head")
    vla.add_argument("--state-in-prompt", action="store_true", help="write the proprio state into the prompt")
    vla.add_argument("--state-dim", type=int, default=0, help="proprio dims the robot sends (with --state-in-prompt)")
    vla.add_argument("--seed", type=int, default=0, help="seed of a random action head")
    vla.add_argument("--action-norm", choices=("bounds", "meanstd"), default="bounds",
                     help="how --data statistics normalise actions (OpenVLA-OFT: q01/q99 bounds)")  # fmt: skip
    vla.set_defaults(func=run_image_vla)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", type=Path, required=True, help="transformers checkpoint directory on local disk")
    p.add_argument("--out", type=Path, required=True, help="policy bundle directory to write")
    stats = p.add_mutually_exclusive_group(required=True)
    stats.add_argument("--stats", type=Path, help="statistics file: this project's stats.json or openpi's norm_stats.json")
    stats.add_argument("--data", nargs="+", metavar="SPEC", help="compute the statistics from these windows; " + DATA_HELP)
    p.add_argument("--demos", type=int_list, help="demo_i of every HDF5 file to use with --data (default: all)")
    p.add_argument("--hidden-size", type=int, help="expected hidden size D (default: the checkpoint's; checked)")
    p.add_argument("--chunk-len", type=int, help="steps per chunk H (pi0 default: the checkpoint's chunk_size)")
    p.add_argument("--action-dim", type=int, default=7, help="robot action dims A")
    p.add_argument("--gripper-dims", type=int_list, default="6", help="binary action dims, e.g. '6'")
    p.add_argument("--context-layer", type=int, default=-1, help="hidden state the energy head reads (0 = embeddings, -1 = last)")
    p.add_argument("--name", help="policy name reported to clients (default: the checkpoint directory's name)")
    p.add_argument("--relative", action="store_true", help="store the checkpoint path relative to the bundle")


def read_stats_file(path: Path, action_dim: int, state_dim: int) -> NormStats:
    """This project's stats.json, or openpi's norm_stats.json ({"norm_stats": {"actions", "state"}}:
    mean/std/q01/q99, cut to the robot's dims, q01/q99 standing in for the absent min/max)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise BundleArgumentError(f"--stats {path}: unreadable: {e}") from None
    if "norm_stats" not in data:
        try:
            return NormStats.from_dict(data)
        except (TypeError, ValueError, KeyError) as e:
            raise BundleArgumentError(f"--stats {path}: not a stats.json: {e}") from None
    ns = data["norm_stats"]

    def field(name: str, dim: int) -> ArrayStats:
        entry = ns.get(name)
        if not isinstance(entry, dict) or not {"mean", "std"} <= set(entry):
            raise BundleArgumentError(f"--stats {path}: norm_stats.{name} needs mean and std")
        if len(entry["mean"]) < dim:
            raise BundleArgumentError(f"--stats {path}: norm_stats.{name} has {len(entry['mean'])} dims, fewer than {dim}")
        values = {k: tuple(float(x) for x in (entry[k] if k in entry else entry["mean"])[:dim]) for k in ("mean", "std", "q01", "q99")}
        return ArrayStats(**values, min=values["q01"], max=values["q99"])

    state = field("state", state_dim) if state_dim else None
    return NormStats(action=field("actions", action_dim), state=state, action_mode="meanstd", binary_dims=())


def statistics(args: argparse.Namespace, chunk_len: int, state_dim: int, action_norm: str) -> NormStats:
    """From --stats or --data, checked against the robot's action and state dims."""
    gripper = tuple(args.gripper_dims)
    if args.stats is not None:
        stats = read_stats_file(args.stats, args.action_dim, state_dim)
        if not stats.binary_dims and gripper:
            stats = NormStats(stats.action, stats.state, stats.action_mode, stats.state_mode, gripper)
    else:
        from energy_rerank.data import load_data

        windows = load_data(args.data, chunk_len, args.demos).windows
        if windows.action_dim != args.action_dim:
            raise BundleArgumentError(f"--action-dim {args.action_dim}, but --data has {windows.action_dim}-dim actions")
        stats = windows.norm_stats(lowdim=False, state=bool(state_dim), binary_dims=gripper, action_mode=action_norm)  # type: ignore[arg-type]
    if stats.action.dim != args.action_dim:
        raise BundleArgumentError(f"--action-dim {args.action_dim}, but the statistics have {stats.action.dim} action dims")
    have = 0 if stats.state is None else stats.state.dim
    if state_dim and have != state_dim:
        raise BundleArgumentError(f"--state-dim {state_dim}, but the statistics have {have} state dims")
    return stats


def _checkpoint_ref(args: argparse.Namespace) -> str:
    if not args.relative:
        return str(args.checkpoint.resolve())
    import os

    return os.path.relpath(args.checkpoint.resolve(), args.out.resolve())


def _refuse(what: str, problems: list[str]) -> None:
    if problems:
        raise BundleArgumentError(f"{what} does not fit: " + "; ".join(problems))


def run_pi0(args: argparse.Namespace) -> int:
    from energy_rerank.policy.pi0 import Pi0Config, checkpoint_problems, read_checkpoint_config

    try:
        hf = read_checkpoint_config(args.checkpoint)
        text, vision = hf.vlm_config.text_config, hf.vlm_config.vision_config
        config = Pi0Config(
            checkpoint=_checkpoint_ref(args),
            hidden_size=args.hidden_size or int(text.hidden_size),
            chunk_len=args.chunk_len or int(hf.chunk_size),
            action_dim=args.action_dim,
            state_dim=args.state_dim,
            cameras=tuple(args.cameras),
            image_size=(int(vision.image_size), int(vision.image_size)),
            context_layer=args.context_layer,
            num_steps=args.num_steps or int(hf.num_inference_steps),
            draws=args.draws,
            max_prompt_len=args.max_prompt_len,
            dtype=args.dtype,
            gripper_dims=tuple(args.gripper_dims),
            name=args.name or args.checkpoint.resolve().name,
        )
        _refuse(f"pi0 checkpoint {args.checkpoint}", checkpoint_problems(config, hf))
        stats = statistics(args, config.chunk_len, config.state_dim, args.action_norm)
    except ValueError as e:
        raise SystemExit(f"energy-rerank policy-bundle pi0: {e}") from None
    from energy_rerank.policy.pi0 import write_bundle

    out = write_bundle(args.out, config, stats)
    print(f"wrote pi0 bundle {out} (H={config.chunk_len}, A={config.action_dim}, D={config.hidden_size}, "
          f"{config.num_steps} steps) -> {config.checkpoint}")  # fmt: skip
    return 0


def run_image_vla(args: argparse.Namespace) -> int:
    import torch

    from energy_rerank.checkpoint import check_weights
    from energy_rerank.policy.hf_adapter import ActionTokens
    from energy_rerank.policy.image_vla import (
        ImageVLAConfig,
        build_head,
        checkpoint_problems,
        read_checkpoint_config,
        write_bundle,
    )

    try:
        hf = read_checkpoint_config(args.checkpoint)
        text = hf.get_text_config()
        vision = getattr(hf, "vision_config", None)
        side = int(getattr(vision, "image_size", 224))
        token_id, trailing_id = args.token_id, args.trailing_id
        if token_id is None or trailing_id is None:
            from transformers import AutoTokenizer

            tok = AutoTokenizer.from_pretrained(str(args.checkpoint), local_files_only=True)
            token_id = tok.pad_token_id if token_id is None else token_id
            trailing_id = tok.eos_token_id if trailing_id is None else trailing_id
        chunk_len = args.chunk_len or 8
        config = ImageVLAConfig(
            checkpoint=_checkpoint_ref(args),
            hidden_size=args.hidden_size or int(text.hidden_size),
            num_layers=args.num_layers or int(text.num_hidden_layers),
            chunk_len=chunk_len,
            action_dim=args.action_dim,
            action_tokens=ActionTokens(
                count=chunk_len * args.tokens_per_step, tokens_per_step=args.tokens_per_step,
                token_id=int(token_id or 0), trailing=args.trailing, trailing_id=int(trailing_id or 0),
            ),  # fmt: skip
            head_blocks=args.head_blocks,
            head_hidden=args.head_hidden,
            cameras=tuple(args.cameras),
            image_size=tuple(args.image_size) if args.image_size else (side, side),  # type: ignore[arg-type]
            state_in_prompt=args.state_in_prompt,
            state_dim=args.state_dim,
            context_layer=args.context_layer,
            gripper_dims=tuple(args.gripper_dims),
            name=args.name or args.checkpoint.resolve().name,
        )
        _refuse(f"checkpoint {args.checkpoint}", checkpoint_problems(config, hf))
        stats = statistics(args, config.chunk_len, 0, args.action_norm)
        torch.manual_seed(args.seed)
        head = build_head(config)
        if args.head is not None:
            from safetensors.torch import load_file

            weights = load_file(str(args.head))
            check_weights(head, weights, where=f"--head {args.head}")
            head.load_state_dict(weights)
    except ValueError as e:
        raise SystemExit(f"energy-rerank policy-bundle image-vla: {e}") from None
    out = write_bundle(args.out, config, head, stats)
    print(f"wrote image_vla bundle {out} (H={config.chunk_len}, A={config.action_dim}, D={config.hidden_size}, "
          f"L={config.num_layers}) -> {config.checkpoint}")  # fmt: skip
    return 0
