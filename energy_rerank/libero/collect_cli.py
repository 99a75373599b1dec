"""`energy-rerank libero takeover | collect`: on-policy tools that need a running server and the simulator."""

from __future__ import annotations

import argparse
import functools
import json
from typing import Any

from energy_rerank.cli import HelpFormatter, int_list


def add_parsers(sub: Any) -> None:
    """Register the on-policy actions under `energy-rerank libero`."""
    from energy_rerank.libero.protocol import parse_init_states

    p = sub.add_parser(
        "takeover",
        help="how often the scripted expert, taking over from the served policy's states, succeeds",
        description=(
            "The check that expert labels of on-policy states are worth learning from. For each task and "
            "init state the served policy (N = 1, through the server at --server) runs one episode; every "
            "--every-th state it visits is restored in a scratch simulator and the scripted expert, its "
            "phase read from that state, takes over with the suite's full step budget. Prints the success "
            "rate of the take-overs per task and overall (Wilson 95%) and writes takeover.json (per task, per "
            "inferred phase, every take-over) to --out. Start the server first, e.g. "
            "`energy-rerank serve --policy P --energy E`."
        ),
        formatter_class=HelpFormatter,
    )
    p.add_argument("--server", required=True, help="server address host:port (any gRPC target)")
    p.add_argument("--suite", default="libero_object", help="LIBERO suite")
    p.add_argument("--tasks", type=int_list, default="0-9", help="task ids, e.g. '0-9', '0,3,5' or '2'")
    p.add_argument(
        "--init-states",
        type=parse_init_states,
        default="0-2",
        help="init states of the policy's episodes",
    )
    p.add_argument("--every", type=int, default=40, help="take over at visited steps every, 2 x every, ...")
    p.add_argument(
        "--max-steps", type=int, default=None, help="expert's budget per take-over (default: the suite's)"
    )
    p.add_argument("--seed", type=int, default=0, help="base of the policy episodes' request seeds")
    p.add_argument("--token", default=None, help="bearer token if the server requires one")
    p.add_argument("--out", required=True, help="output directory for takeover.json")
    p.set_defaults(func=_takeover)

    c = sub.add_parser(
        "collect",
        help="on-policy rollouts through the server, with the scripted expert's label chunk at every step",
        description=(
            "Run the served policy through the server at --server (N = --n-candidates, --switch-margin) from "
            "each of --init-states of every task and write one HDF5 per task in the project's format: actions "
            "executed, MuJoCo states, success flags (rewards/dones, and the file attribute successes), the "
            "low-dim observations, and obs/expert_label [T, H, 7], the scripted expert's chunk from every "
            "visited state. Readable by every --data loader. Each task is written whole when done and a "
            "rerun skips tasks already on disk, so a stopped collection resumes. Init states 30-49 are held "
            "out for closed-loop numbers and refused unless --allow-held-out."
        ),
        formatter_class=HelpFormatter,
    )
    c.add_argument("--server", required=True, help="server address host:port (any gRPC target)")
    c.add_argument("--suite", default="libero_object", help="LIBERO suite")
    c.add_argument("--tasks", type=int_list, default="0-9", help="task ids, e.g. '0-9', '0,3,5' or '2'")
    c.add_argument("--init-states", type=parse_init_states, default="0-29",
                   help="init states of the rollouts, one per task each")  # fmt: skip
    c.add_argument("--allow-held-out", action="store_true", help="accept held-out init states (30-49)")
    c.add_argument(
        "--n-candidates", type=int, default=1, help="N per SelectAction (1 = the policy's own chunk)"
    )
    c.add_argument(
        "--switch-margin", type=float, default=None, help="sent with every request (default: the server's)"
    )
    c.add_argument("--max-steps", type=int, default=None, help="control-step cap (default: the suite's)")
    c.add_argument("--label-every", type=int, default=1,
                   help="label every k-th visited state (each label runs the expert H steps in a scratch "
                        "simulator: k = 4 collects about 3x faster); unlabelled steps make no training window")  # fmt: skip
    c.add_argument("--expert-share", type=float, default=0.0, metavar="BETA",
                   help="share of chunk requests on which the expert steers: the candidate nearest its label "
                        "replaces the server's pick (DAgger's mixture; needs --n-candidates > 1). The rollouts then "
                        "cover the states a well-chosen chunk leads to, not only where the robot goes alone")  # fmt: skip
    c.add_argument("--workers", type=int, default=1,
                   help="processes collecting whole tasks side by side against the one server")  # fmt: skip
    c.add_argument("--seed", type=int, default=0, help="base of the request seeds")
    c.add_argument("--token", default=None, help="bearer token if the server requires one")
    c.add_argument("--out", required=True, help="output directory (one HDF5 per task, collect_report.json)")
    c.set_defaults(func=_collect)


def _takeover(args: argparse.Namespace) -> int:
    from energy_rerank.libero.takeover import TakeoverConfig, run_takeover_check, write_takeover_report
    from energy_rerank_client import RerankClient

    try:
        cfg = TakeoverConfig(
            suite=args.suite,
            tasks=args.tasks,
            init_states=tuple(args.init_states),
            every=args.every,
            max_steps=args.max_steps,
            seed=args.seed,
        )
    except (ValueError, argparse.ArgumentTypeError) as e:
        raise SystemExit(f"libero takeover: {e}") from None
    with RerankClient(args.server, token=args.token, timeout=30.0) as client:
        report = run_takeover_check(client, cfg)
    path = write_takeover_report(report, args.out)

    def line(r: dict[str, Any]) -> str:
        return f"{r['successes']}/{r['takeovers']}"

    print(
        json.dumps(
            {
                "overall": line(report["overall"]),
                "per_task": {t: line(r) for t, r in report["per_task"].items()},
                "per_phase": {p: line(r) for p, r in report["per_phase"].items()},
                "from_failed_policy_episodes": line(report["from_failed_policy_episodes"]),
                "written": str(path),
            },
            indent=1,
        )
    )
    return 0


def _collect(args: argparse.Namespace) -> int:
    from energy_rerank.libero.collect import CollectConfig, collect
    from energy_rerank.libero.protocol import refuse_held_out
    from energy_rerank_client import RerankClient

    refuse_held_out(args.init_states, args.allow_held_out)
    try:
        cfg = CollectConfig(
            suite=args.suite,
            tasks=args.tasks,
            init_states=tuple(args.init_states),
            num_candidates=args.n_candidates,
            switch_margin=args.switch_margin,
            seed=args.seed,
            max_steps=args.max_steps,
            label_every=args.label_every,
            expert_share=args.expert_share,
        )
    except (ValueError, argparse.ArgumentTypeError) as e:
        raise SystemExit(f"libero collect: {e}") from None
    if args.workers < 1:
        raise SystemExit(f"libero collect: --workers must be >= 1, got {args.workers}")
    connect = functools.partial(RerankClient, args.server, token=args.token, timeout=30.0)
    with connect() as client:
        report = collect(client, cfg, args.out, workers=args.workers, connect=connect)
    print(json.dumps({t: f"{r['successes']}/{r['episodes']}" for t, r in report["tasks"].items()}, indent=1))
    return 0
