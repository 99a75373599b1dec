"""`energy-rerank train-policy`: behaviour-clone the reference policy on any --data source.

    energy-rerank train-policy --data synthetic:episodes=1000 --out runs/policy        # tiny, low-dim, minutes
    energy-rerank train-policy --data synthetic:episodes=1000,image_size=32 --inputs image --size small --out runs/img
    energy-rerank train-policy --data runs/libero/object --demos 0-9 --val-episodes 1 --max-text-len 16 --out runs/libero/policy

Validation windows come from --val-data when given, else the last --val-episodes episodes of
every task are held out (for LIBERO files: the last demos of each task's file). Writes a policy
bundle (config.json, model.safetensors, stats.json) that `serve`, `cache-features` and `eval`
read, TensorBoard logs under OUT/logs, and prints a JSON summary (held-out L1 of every layer's
chunk before and after training).
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import numpy as np

from energy_rerank.cli import HelpFormatter, add_data_args

HELP = "behaviour-clone the reference policy (L1) on --data and save a policy bundle"


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "train-policy",
        help=HELP,
        description=__doc__,
        formatter_class=type("Fmt", (HelpFormatter, argparse.RawDescriptionHelpFormatter), {}),
    )
    add_data_args(p)
    p.add_argument("--val-data", nargs="+", metavar="SPEC", help="validation sources (default: held out from --data)")
    p.add_argument("--val-episodes", type=int, default=1,
                   help="without --val-data: episodes per task held out from the end of --data")  # fmt: skip
    p.add_argument("--out", required=True, help="bundle directory to write (replaced atomically)")
    p.add_argument("--size", choices=("tiny", "small"), default="tiny", help="reference policy size")
    p.add_argument("--inputs", choices=("lowdim", "image"), default="lowdim",
                   help="lowdim: the scene's low-dim vector (object poses + proprio) as state tokens; image: the "
                        "data's cameras + proprio (synthetic: add image_size=32 to its spec; LIBERO: demos recorded "
                        "with --image-size)")  # fmt: skip
    p.add_argument("--chunk-len", type=int, default=8, help="H: action steps per chunk")
    p.add_argument("--max-text-len", type=int, default=40, help="instruction bytes read (incl. BOS/EOS)")
    p.add_argument("--steps", type=int, default=1500, help="optimiser steps")
    p.add_argument("--batch-size", type=int, default=64, help="windows per step")
    p.add_argument("--lr", type=float, default=2e-3, help="peak learning rate")
    p.add_argument("--layer-loss-weight", type=float, default=0.0,
                   help="deep supervision: weight of earlier layers' L1 (0 = last layer only, as OpenVLA-OFT)")  # fmt: skip
    p.add_argument("--eval-every", type=int, default=250, help="steps between held-out evaluations")
    p.add_argument("--context-layer", type=int, default=-1,
                   help="hidden states the energy head will read: 0 = token embeddings, l = after layer l, -1 = last")  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="weight init and batch order")
    p.add_argument("--log-dir", help="TensorBoard directory (default: OUT/logs)")
    p.add_argument("--device", default="cpu", help="torch device")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def held_out_tail(episode: np.ndarray, tasks: list[str], k: int) -> np.ndarray:
    """[N] bool: the windows of the last k episodes of every task (episode [N], tasks [N])."""
    label = np.asarray(tasks)
    val = np.zeros(len(episode), bool)
    for t in np.unique(label):
        eps = np.unique(episode[label == t])  # sorted, in data order
        val |= (label == t) & np.isin(episode, eps[len(eps) - k :] if k > 0 else [])
    return val


def run(args: argparse.Namespace) -> int:
    import torch

    from energy_rerank.data import load_data
    from energy_rerank.policy.reference import ReferenceConfig, ReferenceVLA
    from energy_rerank.training.bc import BCConfig, train_bc

    image = args.inputs == "image"
    data = load_data(args.data, args.chunk_len, args.demos, args.stride, images=image, failed_steps=args.failed_steps)
    if args.val_data:
        train, val = data.windows, load_data(args.val_data, args.chunk_len, None, args.stride, images=image).windows
    else:
        held = held_out_tail(data.windows.episode, data.tasks, args.val_episodes)
        train, val = data.windows.subset(np.flatnonzero(~held)), data.windows.subset(np.flatnonzero(held))
        if not len(train):
            raise SystemExit(f"--val-episodes {args.val_episodes} holds out every episode of --data")
        if not len(val):
            val = train  # nothing held out: validation reports the training fit
    first = train.observations[0]
    inputs: dict[str, Any]
    if image:
        if not first.images:
            raise SystemExit("--inputs image: the --data observations carry no camera images")
        cams = tuple(sorted(first.images))
        inputs = {"cameras": cams, "image_size": tuple(first.images[cams[0]].shape[:2]),
                  "state_dim": 0 if first.state is None else len(first.state)}  # fmt: skip
    else:
        if first.lowdim is None:
            raise SystemExit("--inputs lowdim: the --data observations carry no low-dim scene state")
        inputs = {"lowdim_dim": len(first.lowdim)}
    torch.manual_seed(args.seed)
    cfg = ReferenceConfig.preset(
        args.size, chunk_len=args.chunk_len, max_text_len=args.max_text_len, context_layer=args.context_layer, **inputs
    )
    policy = ReferenceVLA(cfg).to(args.device)
    config = BCConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        layer_loss_weight=args.layer_loss_weight,
        eval_every=args.eval_every,
        seed=args.seed,
    )
    result = train_bc(
        policy, train, val, config, log_dir=args.log_dir or f"{args.out}/logs", out=args.out,
        progress=not args.no_progress,
    )  # fmt: skip
    summary = {
        "bundle": result.bundle,
        "train_windows": len(train),
        "val_windows": len(val),
        "episodes": len(set(data.windows.episode.tolist())),
        "val_l1_per_layer_before": [round(v, 4) for v in result.initial_val_l1],
        "val_l1_per_layer_after": [round(v, 4) for v in result.final_val_l1],
        "skipped_steps": result.skipped_steps,
        "seconds": round(result.seconds, 1),
    }
    print(json.dumps(summary, indent=2))
    return 0
