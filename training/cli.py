"""`energy-rerank train` and `energy-rerank cache-features` (and `train-policy`, from policy_cli).

    energy-rerank train --debug --out runs/debug                 # synthetic features, seconds
    energy-rerank cache-features --policy runs/policy --data synthetic:episodes=200 --out runs/features
    energy-rerank cache-features --policy runs/policy --data runs/libero/object --demos 0-9 --out runs/feats
    torchrun --nproc_per_node=2 -m energy_rerank.cli cache-features ...   # each rank caches its share
    energy-rerank train --preset tiny-reference --cache runs/features --out runs/energy
    energy-rerank train ... --resume                             # continue from <out>/checkpoints
    torchrun --nproc_per_node=2 -m energy_rerank.cli train --debug --out runs/ddp
    energy-rerank train --mode joint --policy runs/policy --episodes 200 --out runs/joint

<out> is the energy bundle the server loads (config.json, model.safetensors, stats.json), with the
run's checkpoints/, tb/ (TensorBoard), train_config.json and summary.json beside it.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from energy_rerank.cli import HelpFormatter, add_data_args, float_list, layer_list
from energy_rerank.config import EnergyConfig, config_from_dict
from energy_rerank.training.config import MODES, PRESETS, TrainConfig, preset
from energy_rerank.training.losses import LOSS_PRESETS

if TYPE_CHECKING:
    from energy_rerank.training.distributed import DistInfo


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "train",
        help="train the energy head",
        description=(
            "Train the energy head on cached policy features (energy-only, the default), or jointly "
            "with the reference policy (joint = full phase separation; alternating; monitor-only). "
            "--out becomes the energy bundle `serve --energy` loads, with the run's checkpoints, TensorBoard "
            "logs and summary.json beside it."
        ),
        formatter_class=HelpFormatter,
    )
    p.add_argument("--out", required=True, type=Path, help="energy bundle directory to write (the run's files go beside the head)")
    p.add_argument("--preset", choices=sorted(PRESETS), default="default", help="starting configuration")
    p.add_argument("--debug", action="store_true", help="same as --preset debug: synthetic features, seconds")
    p.add_argument("--config", type=Path, help="a train_config.json to start from instead of a preset")
    p.add_argument("--cache", help="feature cache directory (see cache-features); none = synthetic features")
    p.add_argument("--mode", choices=MODES, help="training mode (default: the preset's, energy-only)")
    p.add_argument("--policy", type=Path, help="reference policy bundle (joint/alternating/monitor-only modes)")
    p.add_argument("--episodes", type=int, default=200, help="synthetic-task episodes when --policy is given")
    p.add_argument("--steps", type=int, help="optimiser steps")
    p.add_argument("--batch-size", type=int, help="samples per step per rank")
    p.add_argument("--lr", type=float, help="peak learning rate of the energy head")
    p.add_argument("--loss", choices=sorted(LOSS_PRESETS),
                   help="loss terms: infonce (the seed's: expert vs negatives) or listwise (rank the server's own "
                        "candidates by their L1 to the expert; use it for heads that will rerank) or listwise-gain (the same, half of each "
                        "sample's weight set by how much its best candidate beats the base chunk) (default: the preset's)")  # fmt: skip
    p.add_argument("--gripper-mode", choices=("keep", "flip", "vote"),
                   help="gripper of the sampler candidates used as negatives; match what eval/serve will use "
                        "(default: the preset's)")  # fmt: skip
    p.add_argument("--sigmas", type=float_list, help="noise sigmas of those sampler candidates, e.g. '0.1,0.3,0.5' (default: the preset's)")
    p.add_argument("--layer-candidates", type=layer_list, metavar="LAYERS",
                   help="the policy's layer chunks among those sampler candidates: 'none' or layer indices, e.g. "
                        "'0,1'; recorded in the bundle, so serve builds the same candidates (default: the preset's, "
                        "all but the last)")  # fmt: skip
    p.add_argument("--tau", type=float, help="InfoNCE temperature")
    p.add_argument("--adaptive-tau", action="store_true", help="tau = max(tau, 2 std(E))")
    p.add_argument("--activation", choices=("softplus", "sigmoid", "identity"), help="energy activation")
    p.add_argument("--device", help="cpu, cuda (under torchrun each rank takes its local GPU)")
    p.add_argument("--seed", type=int, help="seed of init, data order, negatives and dropout")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in <out>")
    p.add_argument("--stop-after", type=int, help="stop (with a checkpoint) after this many steps")
    p.set_defaults(func=run_train)

    c = subparsers.add_parser(
        "cache-features",
        help="run a frozen policy over a dataset once into a feature cache",
        description=(
            "Run a frozen policy bundle of any kind (reference policy, hf_adapter, ...) over every window of "
            "the --data sources and store context, mask, layer actions, base and expert chunks in safetensors "
            "shards (the policy's statistics in the cache's meta), for `energy-rerank train --cache`. Under "
            "torchrun every rank caches a contiguous share of the episodes and the shards form one cache."
        ),
        formatter_class=HelpFormatter,
    )
    c.add_argument("--policy", required=True, type=Path, help="policy bundle directory")
    add_data_args(c)
    c.add_argument("--out", required=True, type=Path, help="cache directory to write (must not exist)")
    c.add_argument("--batch-size", type=int, default=64, help="observations per policy call")
    c.add_argument("--shard-size", type=int, default=4096, help="samples per shard file")
    c.add_argument("--device", default="cpu", help="torch device of the policy (under torchrun, cuda = each rank's local GPU)")
    c.set_defaults(func=run_cache)

    if importlib.util.find_spec("energy_rerank.training.policy_cli") is not None:
        from energy_rerank.training import policy_cli

        policy_cli.add_parser(subparsers)


def build_config(args: argparse.Namespace) -> TrainConfig:
    if args.config:
        cfg = config_from_dict(TrainConfig, json.loads(args.config.read_text()))
    else:
        cfg = preset("debug" if args.debug else args.preset)
    top: dict[str, Any] = {}
    for name in ("mode", "steps", "device", "seed"):
        if getattr(args, name) is not None:
            top[name] = getattr(args, name)
    data = {"cache_dir": args.cache} if args.cache else {}
    if args.batch_size is not None:
        data["batch_size"] = args.batch_size
    base_loss = LOSS_PRESETS[args.loss] if args.loss else cfg.loss
    sampler: dict[str, Any] = {}
    if args.gripper_mode:
        sampler["gripper_mode"] = args.gripper_mode
    if args.sigmas:
        sampler["sigmas"] = args.sigmas
    if args.layer_candidates is not None:
        sampler["layers"] = args.layer_candidates
    loss: dict[str, Any] = {}
    if args.tau is not None:
        loss["tau"] = args.tau
    if args.adaptive_tau:
        loss["adaptive_tau"] = True
    energy = dataclasses.replace(cfg.energy, activation=args.activation) if args.activation else cfg.energy
    if args.cache:
        energy = fit_to_cache(energy, args.cache)
    return cfg.replace(
        **top,
        data=dataclasses.replace(cfg.data, **data),
        loss=dataclasses.replace(base_loss, **loss),
        sampler=dataclasses.replace(cfg.sampler, **sampler),
        optim=dataclasses.replace(cfg.optim, lr=args.lr) if args.lr is not None else cfg.optim,
        energy=energy,
    )


def fit_to_cache(energy: EnergyConfig, cache_dir: str | Path) -> EnergyConfig:
    """The head's input widths taken from the cache (context width D, chunk [H, A]): a preset
    sets the head's size, the policy that wrote the cache sets what it reads."""
    from energy_rerank.training.cache import FeatureCache

    shapes = FeatureCache(cache_dir).index["shapes"]
    d, (h, a) = int(shapes["context"][-1]), map(int, shapes["base"])
    if energy.action_offset == 0:
        return dataclasses.replace(energy, context_dim=d, chunk_len=h, action_dim=a)
    if energy.action_offset + energy.action_dim > a:
        raise SystemExit(
            f"--cache {cache_dir}: the head scores action dims [{energy.action_offset}, "
            f"{energy.action_offset + energy.action_dim}) but the cached chunks have {a}"
        )
    return dataclasses.replace(energy, context_dim=d, chunk_len=h)


def run_train(args: argparse.Namespace) -> int:
    from energy_rerank.training.distributed import init_distributed, shutdown

    cfg = build_config(args)
    info = init_distributed(cfg.device)
    try:
        # The trainer (and its DDP wrapper) is gone when _fit returns, before the process group:
        # see distributed.shutdown.
        summary = _fit(args, cfg, info)
        if info.is_main:
            held = summary.get("heldout", {})
            print(
                f"done: {summary['steps']} steps, {summary['skipped_steps']} skipped; held-out loss "
                f"{held.get('loss', float('nan')):.4g}, ranking accuracy {held.get('rank_acc', float('nan')):.3f}; "
                f"bundle {args.out}"
            )
    finally:
        shutdown(info)
    return 0


def _fit(args: argparse.Namespace, cfg: TrainConfig, info: DistInfo) -> dict[str, Any]:
    from energy_rerank.training.energy_trainer import EnergyTrainer, load_store

    kwargs: dict[str, Any] = {}
    if args.policy is not None:
        from energy_rerank.policy.reference import ReferenceVLA
        from energy_rerank.synthetic import SyntheticTask
        from energy_rerank.training.policy_data import PolicyWindows

        policy = ReferenceVLA.load(args.policy)
        task = SyntheticTask()
        windows = task.windows(task.episodes(args.episodes, seed=cfg.seed + 1))
        kwargs.update(policy=policy, windows=PolicyWindows(policy, windows))
    if args.policy is None or cfg.data.cache_dir:  # else: features come from the live policy
        store, stats = load_store(cfg)
        kwargs.update(features=store, stats=stats)
    trainer = EnergyTrainer(cfg, args.out, info=info, **kwargs)
    return trainer.fit(resume=args.resume, stop_after=args.stop_after)


def run_cache(args: argparse.Namespace) -> int:
    from energy_rerank.data import load_data
    from energy_rerank.policy.loading import load_policy
    from energy_rerank.training.distributed import init_distributed, shutdown
    from energy_rerank.training.policy_data import cache_policy_features

    info = init_distributed(args.device)
    try:
        policy = load_policy(args.policy, info.device)
        d = policy.description
        data = load_data(args.data, d.chunk_len, args.demos, args.stride, images=bool(d.cameras), failed_steps=args.failed_steps)
        meta = {
            "data": list(args.data),
            "demos": list(args.demos) if args.demos else "all",
            "stride": args.stride,
            "failed_steps": args.failed_steps if args.failed_steps is not None else "all",
            "tasks": sorted(set(data.tasks)),
            "episodes": len(set(data.windows.episode.tolist())),
        }
        out = cache_policy_features(
            policy, data.windows, args.out, args.batch_size, args.shard_size, meta=meta, info=info
        )
        if info.is_main:
            print(f"wrote {len(data.windows)} samples of {meta['episodes']} episodes to {out}")
    finally:
        shutdown(info)
    return 0
