"""`energy-rerank eval offline`: reranking on recorded LIBERO episodes, JSON report + PNG plots."""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from energy_rerank.cli import (
    LAYER_CANDIDATES_HELP,
    HelpFormatter,
    add_data_args,
    float_list,
    int_list,
    layer_list,
)


def add_parser(subparsers: Any) -> None:
    ev = subparsers.add_parser("eval", help="evaluate reranking: offline on recorded episodes, or closed loop in LIBERO through a server")
    sub = ev.add_subparsers(dest="eval_command", metavar="MODE", required=True)
    p = sub.add_parser(
        "offline",
        help="per-step chunk error of base / reranked / oracle / random candidates on recorded episodes",
        description=(
            "For every step of the given LIBERO HDF5 (or LeRobot parquet) episodes: the policy proposes, "
            "N_max candidates are drawn once (the candidates at N are the first N, as in serving), the energy "
            "head scores them and the recorded chunk. Reports the L1 and per-dim error against the recorded "
            "chunk of the base chunk, rerank@N (lowest energy), oracle@N (best of N) and random@N, the "
            "energy-vs-error Spearman correlation, and the recorded chunk's energy rank; overall and per task. "
            "Also calibrates the server's --switch-margin (keep the policy's chunk unless a candidate's energy "
            "is lower by more than it) on even episodes at N = --margin-n and reports it on odd ones. "
            "Writes report.json, error_vs_n.png and energy_hist.png to --out."
        ),
        formatter_class=HelpFormatter,
    )
    add_data_args(p)
    p.add_argument("--policy", required=True, help="policy bundle directory (energy-rerank train-policy)")
    p.add_argument("--energy", required=True, help="energy head bundle directory (energy-rerank train)")
    p.add_argument("--out", required=True, help="output directory for report.json and the plots")
    p.add_argument("--n-candidates", type=int_list, default="1,4,16,64,256",
                   help="candidate counts N to report, e.g. '1,16,64'")  # fmt: skip
    p.add_argument("--batch-size", type=int, default=32, help="observations per policy/scorer call")
    p.add_argument("--seed", type=int, default=0, help="candidate seed (window i uses seed + i)")
    p.add_argument("--sigma-scale", type=float, default=1.0, help="multiplies the sampler's noise sigmas")
    p.add_argument("--sigmas", type=float_list,
                   help="sampler noise sigma schedule, normalised units, e.g. 0.1,0.3,0.5 (default: what the "
                        "energy head was trained with)")  # fmt: skip
    p.add_argument("--gripper-mode", choices=("keep", "flip", "vote"),
                   help="noise candidates' gripper (default: what the energy head was trained with)")  # fmt: skip
    p.add_argument("--layer-candidates", type=layer_list, metavar="LAYERS", help=LAYER_CANDIDATES_HELP)
    p.add_argument(
        "--margin-n",
        type=int,
        help="N at which the switch margin is calibrated, one of --n-candidates (default: the largest, so the margin "
        "holds at every N up to it; a margin fitted at a small N lets too many switches through at a large one)",
    )
    p.add_argument(
        "--write-margin",
        action="store_true",
        help="record the calibrated switch margin in the energy bundle (selection.json), which `serve` then "
        "uses unless --switch-margin is given",
    )
    p.set_defaults(func=_offline)
    add_libero_parser(sub)  # closed loop through the server, below
    add_table_parser(sub)


def add_table_parser(sub: Any) -> None:
    p = sub.add_parser(
        "table",
        help="closed-loop reports -> one markdown table, every row paired against one base setting",
        description=(
            "Reads `eval libero` report.json files and prints one markdown row per --row: successes, Wilson "
            "95% interval, the share of steps where a non-base chunk was chosen, episodes won / lost against "
            "--base on the same task and init state, the exact two-sided sign test on those, and successes "
            "per task. Rows may come from different runs (another policy, another head) as long as they ran "
            "the same init states with the same request seeds; a row whose episodes differ from the base's "
            "is refused. A row is LABEL::REPORT[#SETTING]: REPORT a report.json or its directory, SETTING one "
            "of the report's settings ('N=1', 'N=64', 'N=64 oracle', 'N=64 M=4'; default N=1)."
        ),
        formatter_class=HelpFormatter,
    )
    p.add_argument("--base", required=True, metavar="ROW", help="the setting every row is paired against, e.g. "
                   "'N = 1::runs/x/closed_loop#N=1'")  # fmt: skip
    p.add_argument("--row", nargs="+", required=True, metavar="ROW", help="rows in order (the base may be one)")
    p.add_argument("--out", help="also write the table to this file (markdown) and FILE.json")
    p.set_defaults(func=_table)


def _table(args: argparse.Namespace) -> int:
    from pathlib import Path

    from energy_rerank.evaluation.table import Row, render, table_rows

    try:
        base = Row.parse(args.base)
        rows = table_rows([base if r == args.base else Row.parse(r) for r in args.row], base)
    except (ValueError, FileNotFoundError) as e:
        raise SystemExit(f"eval table: {e}") from None
    text = render(rows)
    print(text, end="")
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        out.with_name(out.name + ".json").write_text(json.dumps(rows, indent=1))
    return 0


def _offline(args: argparse.Namespace) -> int:
    import numpy as np

    from energy_rerank.candidates import CandidateSampler
    from energy_rerank.checkpoint import read_head_record, write_switch_margin
    from energy_rerank.data import load_data
    from energy_rerank.energy import EnergyModel
    from energy_rerank.evaluation.offline import OfflineConfig, evaluate_windows
    from energy_rerank.evaluation.report import build_report, write_report
    from energy_rerank.policy.loading import load_policy
    from energy_rerank.scoring import TorchScorer

    policy = load_policy(args.policy)
    model = EnergyModel.from_pretrained(args.energy)
    images = bool(policy.description.cameras)
    data = load_data(args.data, policy.description.chunk_len, args.demos, args.stride, images, args.failed_steps)
    windows, tasks = data.windows, data.tasks
    sampler = CandidateSampler.for_policy(policy, read_head_record(args.energy).with_sampler(args.sigmas, args.gripper_mode, args.layer_candidates))
    cfg = OfflineConfig(ns=args.n_candidates, batch=args.batch_size, seed=args.seed, sigma_scale=args.sigma_scale)
    # The largest N by default: the lowest energy falls as N grows, so a margin fitted at 64 lets more
    # switches through at 256 and the error climbs again (LIBERO head seed 1, docs/results.md); one fitted at the
    # largest N keeps the curve flat at every smaller N, where it is merely a little conservative.
    margin_n = args.margin_n if args.margin_n is not None else max(cfg.ns)
    if margin_n not in cfg.ns:
        raise SystemExit(f"--margin-n {margin_n} must be one of --n-candidates {list(cfg.ns)}")
    t0 = time.perf_counter()
    res = evaluate_windows(windows, tasks, policy, TorchScorer(model), sampler, cfg)
    meta = {
        "data": list(args.data),
        "policy": args.policy,
        "energy": args.energy,
        "episodes": len(set(windows.episode.tolist())),
        "demos": list(args.demos) if args.demos else "all",
        "stride": args.stride,
        "sampler": {
            "sigmas": list(sampler.config.sigmas),
            "gripper_mode": sampler.config.gripper_mode,
            "layers": None if sampler.config.layers is None else list(sampler.config.layers),
            "sigma_scale": args.sigma_scale,
        },
        "seconds": round(time.perf_counter() - t0, 1),
    }
    report = build_report(res, meta, margin_n=margin_n)
    paths = write_report(report, res, args.out)
    calibration = report["switch_margin"]
    if args.write_margin:
        if "error" in calibration:
            raise SystemExit(f"--write-margin: cannot calibrate: {calibration['error']}")
        paths.append(
            write_switch_margin(
                args.energy,
                calibration["margin"],
                {"n": calibration["n"], "held_out": calibration["held_out"]},
            )
        )
    o = report["overall"]
    line = {k: round(v["mean"], 4) for k, v in o["l1"].items() if not k.startswith("random")}
    print(
        json.dumps(
            {
                "steps": o["steps"],
                "l1": line,
                "spearman": round(float(np.nan_to_num(o["spearman_energy_vs_error"]["mean"])), 3),
                "switch_margin": {
                    k: calibration[k] for k in ("margin", "held_out", "error") if k in calibration
                },
                "written": [str(p) for p in paths],
            },
            indent=1,
        )
    )
    return 0


# ---------------------------------------------------------------- eval libero (closed loop)
def add_libero_parser(sub: Any) -> None:
    p = sub.add_parser(
        "libero",
        help="closed-loop LIBERO success rate through a running server: base (N=1), head, random, oracle",
        description=(
            "Runs LIBERO episodes under the standard protocol (fixed init states, 10 wait steps, the suite's "
            "max steps); every chunk comes from the server at --server via SelectAction and the client's "
            "chunk broker. Every setting runs the same init states with the same request seeds: once per "
            "--n-candidates N (N=1 = the base policy) and --selectors entry (head = the server's pick; "
            "random = a uniform random one of the server's N; oracle = the one nearest the scripted expert's "
            "label from the current state, the most any head can reach with these candidates), and with "
            "--switch-margins once per (N > 1, margin) for the head: a sweep of the margin against "
            "closed-loop success, on the policy's own states rather than on demonstrations. "
            "Writes report.json (success per task and overall with Wilson 95% intervals, episodes won / "
            "lost against N=1 with the exact sign test, mean episode length, client-observed and server "
            "latency percentiles, episodes per hour, every episode, and the server's model version and "
            "switch margin), success.png and success_vs_n.png to --out. "
            "Start the server first, e.g. `energy-rerank serve --policy P --energy E --address 127.0.0.1:50051`."
        ),
        formatter_class=HelpFormatter,
    )
    p.add_argument("--server", required=True, help="server address host:port (any gRPC target)")
    p.add_argument("--suite", default="libero_object", help="LIBERO suite")
    p.add_argument("--tasks", type=int_list, default="0", help="task ids within the suite, e.g. '0-9' or '0,3,5'")
    p.add_argument(
        "--episodes", type=int, default=None, help="episodes per task and setting: init states 0..K-1 (default 10)"
    )
    p.add_argument(
        "--init-states",
        type=_init_states,
        default=None,
        help="the fixed init states to run instead of 0..K-1, e.g. '30-49' (held out from demos, collection "
        "and calibration, which use 0-29)",
    )
    p.add_argument(
        "--trained-on",
        nargs="+",
        default=[],
        metavar="FILE",
        help="HDF5 files the policy or head learnt from: refuse init states their demos started from",
    )
    p.add_argument("--n-candidates", type=int_list, default="1,16,64",
                   help="candidate counts N, one setting each, e.g. '1,16,64'")  # fmt: skip
    p.add_argument(
        "--switch-margins",
        type=_margin,
        nargs="+",
        default=argparse.SUPPRESS,  # absent: the server's margin only
        metavar="M",
        help="switch margins sent with each request, one setting per N > 1 and margin: numbers >= 0, "
        "inf (never switch) or 'server' (the server's own). Default: the server's only",
    )
    p.add_argument(
        "--selectors",
        nargs="+",
        choices=("head", "random", "oracle"),
        default=["head"],
        help="who picks among the server's N, one setting each: head (the server), random, oracle",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="episode processes against the one server (its batcher batches them); about one per free core",
    )
    p.add_argument("--max-steps", type=int, default=None, help="control-step cap (default: the suite's)")
    p.add_argument("--prefetch", type=float, default=0.0, help="broker prefetch fraction in [0, 1)")
    p.add_argument("--sigma-scale", type=float, default=1.0, help="multiplies the server sampler's sigmas")
    p.add_argument("--seed", type=int, default=0, help="base of the per-request candidate seeds")
    p.add_argument("--token", default=None, help="bearer token if the server requires one")
    p.add_argument(
        "--video-dir", default="", help="write MP4s of the first --video-episodes here (needs imageio)"
    )
    p.add_argument("--video-episodes", type=int, default=2, help="filmed episodes per task and setting")
    p.add_argument("--out", required=True, help="output directory for report.json and the plots")
    p.add_argument(
        "--write-margin",
        metavar="ENERGY_DIR",
        help="after a --switch-margins sweep (not on held-out init states), record in this energy bundle "
        "(selection.json) the margin with the most successes at the largest N, or inf when none beats N = 1",
    )
    p.set_defaults(func=_libero)


def _init_states(text: str) -> tuple[int, ...]:
    from energy_rerank.libero.protocol import parse_init_states

    return parse_init_states(text)


def _margin(text: str) -> float | None:
    """--switch-margins item: 'server' -> None, else a number >= 0 (inf allowed)."""
    if text == "server":
        return None
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number, inf or 'server'") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"a switch margin is >= 0 (inf: never switch), got {text}")
    return value


def _libero(args: argparse.Namespace) -> int:
    import importlib.util

    from energy_rerank.evaluation.closed_loop import ClosedLoopConfig, run_closed_loop, write_report

    if args.video_dir and importlib.util.find_spec("imageio") is None:
        raise SystemExit("--video-dir needs imageio (pip install imageio imageio-ffmpeg); not installed")
    import functools

    from energy_rerank.checkpoint import BundleError, read_head_record
    from energy_rerank.libero.protocol import check_held_out, refuse_held_out
    from energy_rerank_client import RerankClient

    if args.init_states is not None and args.episodes is not None:
        raise SystemExit("--episodes K runs init states 0..K-1; give either it or --init-states, not both")
    try:
        cfg = ClosedLoopConfig(
            suite=args.suite,
            tasks=tuple(args.tasks),
            episodes=args.episodes or 10,
            init_states=tuple(args.init_states or ()),
            ns=tuple(args.n_candidates),
            margins=tuple(getattr(args, "switch_margins", [None])),
            selectors=tuple(args.selectors),
            max_steps=args.max_steps,
            prefetch_fraction=args.prefetch,
            sigma_scale=args.sigma_scale,
            seed=args.seed,
            workers=args.workers,
            video_episodes=args.video_episodes if args.video_dir else 0,
            video_dir=args.video_dir,
        )
        unchecked = check_held_out(cfg.inits(), args.trained_on)
        if args.write_margin:
            refuse_held_out(cfg.inits(), allow=False, flag="--write-margin: the sweep's init states")
            read_head_record(args.write_margin)  # an energy bundle, checked before the episodes run
    except (ValueError, FileNotFoundError, BundleError) as e:
        raise SystemExit(f"eval libero: {e}") from None
    for path in unchecked:
        print(f"eval libero: {path} records no init states (written before they were recorded): not checked")
    connect = functools.partial(RerankClient, args.server, token=args.token, timeout=30.0)
    with connect() as client:
        report = run_closed_loop(
            client, cfg, on_task_done=lambda partial: write_report(partial, args.out), connect=connect
        )
    paths = write_report(report, args.out)
    if args.write_margin:
        from energy_rerank.checkpoint import write_switch_margin
        from energy_rerank.evaluation.margin import closed_loop_margin

        calibration = closed_loop_margin(report, max(cfg.ns))
        margin = calibration.pop("margin")
        paths.append(write_switch_margin(args.write_margin, margin, calibration))
        print(f"eval libero: switch margin {margin:g} written to {paths[-1]}")
    summary = {
        label: {
            "success": f"{s['overall']['successes']}/{s['overall']['episodes']}",
            "rate": round(s["overall"]["rate"], 3),
            "wilson95": [round(v, 3) for v in s["overall"]["wilson95"]],
            "mean_length": round(s["overall"]["mean_length"], 1),
            "client_p50_ms": round(s["latency"]["client"].get("p50_ms", float("nan")), 1),
            "client_p99_ms": round(s["latency"]["client"].get("p99_ms", float("nan")), 1),
            "reranked_share": round(s["reranked_share"], 3),
            "calibrated_share": None if s["calibrated_share"] is None else round(s["calibrated_share"], 3),
            "won_lost_vs_base": None if s["vs_base"] is None else f"{s['vs_base']['won']}/{s['vs_base']['lost']}",
            "sign_test_p": None if s["vs_base"] is None else round(s["vs_base"]["sign_test_p"], 4),
        }
        for label, s in report["settings"].items()
    }
    out = {"settings": summary, "episodes_per_hour": report["episodes_per_hour"], "written": [str(p) for p in paths]}
    print(json.dumps(out, indent=1))
    return 0
