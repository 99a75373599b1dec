"""Oracle best-of-N on held-out synthetic data: how good could reranking get with a perfect scorer?

For each held-out window the policy proposes, the CandidateSampler draws N_max candidates
(seeded per window), and the oracle picks the candidate closest to the expert chunk. The
printed curve is the mean over windows of min over the first N candidates of the L1 to the
expert (robot units, after the same unnormalise-and-clip the Reranker applies). N = 1 is the
policy alone. The gap between the curve and N = 1 is the head-room an energy head can win.

    python scripts/oracle_best_of_n.py --policy runs/policy-tiny
    python scripts/oracle_best_of_n.py              # trains a tiny policy first (about a minute)
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import numpy as np
import torch

from energy_rerank.candidates import CandidateSampler, SamplerConfig
from energy_rerank.policy.base import Proposer
from energy_rerank.policy.windows import Windows


def oracle_best_of_n(
    proposer: Proposer,
    sampler: CandidateSampler,
    windows: Windows,
    ns: Sequence[int],
    seed: int = 0,
    sigma_scale: float = 1.0,
    batch: int = 256,
) -> dict[int, float]:
    """{N: mean over windows of the smallest L1 (robot units) among the first N candidates}."""
    stats = proposer.stats
    a = windows.action_dim
    low, high = stats.action_bounds(normalized=False) if stats else (-torch.ones(a), torch.ones(a))
    n_max = max(ns)
    errors = []  # [b, N_max] per batch
    for start in range(0, len(windows), batch):
        idx = range(start, min(start + batch, len(windows)))
        proposals = proposer.propose([windows.observations[i] for i in idx])
        cands = sampler.sample(
            proposals, n_max, seeds=[seed + i for i in idx], sigma_scales=[sigma_scale] * len(idx)
        )
        robot = cands.float().cpu()
        robot = stats.unnormalize_actions(robot) if stats else robot
        robot = torch.maximum(torch.minimum(robot, high), low)  # [b, N, H, A]
        expert = torch.from_numpy(windows.chunks[start : start + len(idx)])[:, None]  # [b, 1, H, A]
        errors.append((robot - expert).abs().mean(dim=(2, 3)).numpy())
    err = np.concatenate(errors)  # [W, N_max]
    return {n: float(err[:, :n].min(axis=1).mean()) for n in ns}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--policy", help="policy bundle (default: train a tiny low-dim policy first)")
    p.add_argument("--episodes", type=int, default=20, help="held-out episodes (default 20)")
    p.add_argument(
        "--episode-seed", type=int, default=1_000_003, help="held-out episode stream (default 1000003)"
    )
    p.add_argument("--ns", default="1,2,4,8,16,32,64", help="candidate counts, comma-separated")
    p.add_argument(
        "--sigma-scale", type=float, default=1.0, help="multiplies the sampler's sigmas (default 1)"
    )
    p.add_argument(
        "--gripper-mode", choices=("keep", "flip", "vote"), default="keep", help="sampler gripper mode"
    )
    p.add_argument(
        "--steps", type=int, default=600, help="BC steps when training a policy here (default 600)"
    )
    args = p.parse_args(argv)

    from energy_rerank.policy.loading import load_policy
    from energy_rerank.synthetic import SyntheticTask

    task = SyntheticTask()
    if args.policy:
        policy = load_policy(args.policy)
    else:
        from energy_rerank.policy.reference import ReferenceConfig, ReferenceVLA
        from energy_rerank.training.bc import BCConfig, train_bc

        torch.manual_seed(0)
        policy = ReferenceVLA(ReferenceConfig.preset("tiny", lowdim_dim=task.lowdim_dim))
        train = task.windows(task.episodes(200, seed=0))
        train_bc(policy, train, train.subset(range(0, len(train), 10)), BCConfig(steps=args.steps))
    held = task.windows(task.episodes(args.episodes, seed=args.episode_seed))
    ns = sorted({int(n) for n in args.ns.split(",")})
    sampler = CandidateSampler.for_policy(policy, SamplerConfig(gripper_mode=args.gripper_mode))
    curve = oracle_best_of_n(policy, sampler, held, ns, sigma_scale=args.sigma_scale)
    print(f"oracle best-of-N L1 to the expert on {len(held)} held-out windows (robot units)")
    print(f"{'N':>6}  {'L1':>8}  {'vs N=1':>7}")
    for n, v in curve.items():
        print(f"{n:>6}  {v:8.4f}  {v / curve[ns[0]]:7.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
