"""`energy-rerank eval offline`: reranking on recorded LIBERO episodes, JSON report + PNG plots."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any


def add_parser(subparsers: Any) -> None:
    ev = subparsers.add_parser("eval", help="evaluate reranking (offline on recorded episodes)")
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
            "Writes report.json, error_vs_n.png and energy_hist.png to --out."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--rollouts", nargs="+", required=True, help="LIBERO .hdf5 files or LeRobot .parquet files"
    )
    p.add_argument("--policy", required=True, help="policy bundle directory (energy-rerank train-policy)")
    p.add_argument("--energy", required=True, help="energy head bundle directory (energy-rerank train)")
    p.add_argument("--out", required=True, help="output directory for report.json and the plots")
    p.add_argument(
        "--demos", default="", help="demo indices to evaluate per file, e.g. '16-19' (held out); default all"
    )
    p.add_argument("--ns", default="1,4,16,64,256", help="candidate counts N to report")
    p.add_argument("--stride", type=int, default=1, help="evaluate every stride-th step of each episode")
    p.add_argument("--batch", type=int, default=32, help="observations per policy/scorer call")
    p.add_argument("--seed", type=int, default=0, help="candidate seed (window i uses seed + i)")
    p.add_argument("--sigma-scale", type=float, default=1.0, help="multiplies the sampler's noise sigmas")
    p.add_argument("--sigmas", default="0.1,0.3,0.5", help="sampler noise sigma schedule (normalised units)")
    p.add_argument(
        "--gripper-mode", default="keep", choices=("keep", "flip", "vote"), help="noise candidates' gripper"
    )
    p.set_defaults(func=_offline)


def _ints(text: str, flag: str) -> tuple[int, ...]:
    from energy_rerank.libero.cli import parse_tasks  # same "0-3,7" syntax

    try:
        return parse_tasks(text)
    except argparse.ArgumentTypeError as e:
        raise SystemExit(str(e).replace("--tasks", flag)) from None


def _offline(args: argparse.Namespace) -> int:
    import numpy as np

    from energy_rerank.candidates import CandidateSampler, SamplerConfig
    from energy_rerank.energy import EnergyModel
    from energy_rerank.evaluation.offline import OfflineConfig, evaluate_windows
    from energy_rerank.evaluation.report import build_report, write_report
    from energy_rerank.policy.loading import load_policy
    from energy_rerank.rollouts.windows import load_windows
    from energy_rerank.scoring import TorchScorer

    policy = load_policy(args.policy)
    model = EnergyModel.from_pretrained(args.energy)
    images = bool(policy.description.cameras)
    demos = _ints(args.demos, "--demos") if args.demos else None
    windows, tasks = load_windows(args.rollouts, policy.description.chunk_len, demos, args.stride, images)
    sampler = CandidateSampler.for_policy(
        policy,
        SamplerConfig(sigmas=tuple(float(s) for s in args.sigmas.split(",")), gripper_mode=args.gripper_mode),
    )
    cfg = OfflineConfig(
        ns=_ints(args.ns, "--ns"), batch=args.batch, seed=args.seed, sigma_scale=args.sigma_scale
    )
    t0 = time.perf_counter()
    res = evaluate_windows(windows, tasks, policy, TorchScorer(model), sampler, cfg)
    meta = {
        "rollouts": [str(Path(p)) for p in args.rollouts],
        "policy": args.policy,
        "energy": args.energy,
        "episodes": len(set(windows.episode.tolist())),
        "demos": args.demos or "all",
        "stride": args.stride,
        "sampler": {
            "sigmas": args.sigmas,
            "gripper_mode": args.gripper_mode,
            "sigma_scale": args.sigma_scale,
        },
        "seconds": round(time.perf_counter() - t0, 1),
    }
    report = build_report(res, meta)
    paths = write_report(report, res, args.out)
    o = report["overall"]
    line = {k: round(v["mean"], 4) for k, v in o["l1"].items() if not k.startswith("random")}
    print(
        json.dumps(
            {
                "steps": o["steps"],
                "l1": line,
                "spearman": round(float(np.nan_to_num(o["spearman_energy_vs_error"]["mean"])), 3),
                "written": [str(p) for p in paths],
            },
            indent=1,
        )
    )
    return 0
