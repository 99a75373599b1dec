"""`energy-rerank train-policy`: behaviour-clone the reference policy on the synthetic task.

    energy-rerank train-policy --out runs/policy-tiny                       # tiny, low-dim, minutes
    energy-rerank train-policy --out runs/policy-img --inputs image --size small --steps 4000

Writes a policy bundle (config.json, model.safetensors, stats.json) that `energy-rerank serve
--policy` and `energy-rerank cache-features --policy` read, TensorBoard logs under OUT/logs,
and prints a JSON summary (held-out L1 of every layer's chunk before and after training).
LIBERO demonstrations: `energy-rerank libero train-policy`.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

HELP = "behaviour-clone the reference policy (L1) on the synthetic task and save a policy bundle"


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "train-policy",
        help=HELP,
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", required=True, help="bundle directory to write (replaced atomically)")
    p.add_argument(
        "--size", choices=("tiny", "small"), default="tiny", help="reference policy size (default tiny)"
    )
    p.add_argument(
        "--inputs",
        choices=("lowdim", "image"),
        default="lowdim",
        help="lowdim: object poses + proprio as state tokens; image: a rendered top-down camera + proprio",
    )
    p.add_argument(
        "--image-size", type=int, default=32, help="camera image side for --inputs image (default 32)"
    )
    p.add_argument(
        "--episodes", type=int, default=1000, help="training episodes of the synthetic task (default 1000)"
    )
    p.add_argument(
        "--val-episodes", type=int, default=30, help="held-out episodes (another seed; default 30)"
    )
    p.add_argument(
        "--seed", type=int, default=0, help="episode stream, weight init and batch order (default 0)"
    )
    p.add_argument("--steps", type=int, default=1500, help="optimiser steps (default 1500)")
    p.add_argument("--batch-size", type=int, default=64, help="windows per step (default 64)")
    p.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (default 2e-3)")
    p.add_argument(
        "--layer-loss-weight",
        type=float,
        default=0.0,
        help="deep supervision: weight of earlier layers' L1 (default 0 = last layer only, as OpenVLA-OFT)",
    )
    p.add_argument(
        "--eval-every", type=int, default=250, help="steps between held-out evaluations (default 250)"
    )
    p.add_argument(
        "--context-layer",
        type=int,
        default=-1,
        help="hidden states the energy head will read: 0 = token embeddings, l = after layer l, -1 = last "
        "(default -1, the seed's)",
    )
    p.add_argument("--log-dir", help="TensorBoard directory (default OUT/logs)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from energy_rerank.policy.reference import ReferenceConfig, ReferenceVLA
    from energy_rerank.synthetic import SyntheticConfig, SyntheticTask
    from energy_rerank.training.bc import BCConfig, train_bc

    image = args.inputs == "image"
    task = SyntheticTask(SyntheticConfig(image_size=args.image_size if image else 0))
    train = task.windows(task.episodes(args.episodes, seed=args.seed))
    val = task.windows(task.episodes(args.val_episodes, seed=args.seed + 1_000_003))
    torch.manual_seed(args.seed)
    inputs: dict[str, Any] = (
        {
            "cameras": (task.config.camera,),
            "image_size": (args.image_size, args.image_size),
            "state_dim": task.state_dim,
        }
        if image
        else {"lowdim_dim": task.lowdim_dim}
    )
    policy = ReferenceVLA(
        ReferenceConfig.preset(
            args.size, chunk_len=task.chunk_len, context_layer=args.context_layer, **inputs
        )
    ).to(args.device)
    config = BCConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        layer_loss_weight=args.layer_loss_weight,
        eval_every=args.eval_every,
        seed=args.seed,
    )
    result = train_bc(
        policy,
        train,
        val,
        config,
        log_dir=args.log_dir or f"{args.out}/logs",
        out=args.out,
        progress=not args.no_progress,
    )
    summary = {
        "bundle": result.bundle,
        "train_windows": len(train),
        "val_windows": len(val),
        "val_l1_per_layer_before": [round(v, 4) for v in result.initial_val_l1],
        "val_l1_per_layer_after": [round(v, 4) for v in result.final_val_l1],
        "skipped_steps": result.skipped_steps,
        "seconds": round(result.seconds, 1),
    }
    print(json.dumps(summary, indent=2))
    return 0
