"""Synthetic task end to end: BC the tiny reference policy, cache its features, train the energy
head (tiny-reference preset), and measure held-out reranking at N candidates.

    .venv/bin/python scripts/train_energy_synthetic.py --out runs/synthetic --bc-steps 300 --energy-steps 500

Prints (and writes <out>/result.json): base / reranked / oracle held-out chunk L1 and the share of
the oracle's best-of-N gain the head recovers. The trained head is the bundle <out>/energy.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from energy_rerank.candidates import SamplerConfig
from energy_rerank.training.bc import BCConfig
from energy_rerank.training.config import preset
from energy_rerank.training.losses import LOSS_PRESETS, LossConfig, NegativesConfig
from energy_rerank.training.synthetic_pipeline import SyntheticPipelineConfig, run_synthetic_pipeline

LOSSES = {
    "mixed": LossConfig(
        listwise_weight=1.0,
        listwise_temperature=0.01,
        negatives=NegativesConfig(noise_sigmas=(0.05, 0.1, 0.3), sampler_candidates=16),
    ),
    "listwise": LOSS_PRESETS["listwise"],
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="work directory (policy, features, energy head)")
    ap.add_argument("--episodes", type=int, default=60, help="training episodes (BC and feature cache)")
    ap.add_argument("--energy-episodes", type=int, default=None,
                    help="episodes for the head's feature cache (default: the policy's --episodes; the first "
                         "--episodes of them are the policy's own)")  # fmt: skip
    ap.add_argument("--bc-steps", type=int, default=300, help="behaviour-cloning steps of the policy")
    ap.add_argument("--energy-steps", type=int, default=500, help="energy head steps")
    ap.add_argument("--candidates", type=int, default=64, help="N for the rerank evaluation")
    ap.add_argument("--heldout-episodes", type=int, default=12, help="held-out episodes (another seed) evaluated")
    ap.add_argument("--context-layer", type=int, default=-1,
                    help="policy hidden states the head reads: 0 = token embeddings, -1 = last layer (default)")  # fmt: skip
    ap.add_argument("--seed", type=int, default=0, help="seed of the policy's init and of the energy head's training")
    ap.add_argument("--sigmas", type=float, nargs="+", default=[0.02, 0.05, 0.1], help="sampler noise sigmas")
    ap.add_argument("--gripper-mode", default="flip", choices=("keep", "flip", "vote"), help="sampler gripper mode")
    ap.add_argument("--loss", default="mixed", choices=tuple(LOSSES),
                    help="mixed: InfoNCE + listwise over 16 sampler candidates; listwise: mostly listwise over 48 "
                         "sampler candidates + layer chunks (default: %(default)s)")  # fmt: skip
    args = ap.parse_args()
    sampler = SamplerConfig(sigmas=tuple(args.sigmas), gripper_mode=args.gripper_mode)
    energy = preset("tiny-reference")
    energy = energy.replace(
        steps=args.energy_steps,
        seed=args.seed,
        eval_every=max(1, args.energy_steps),
        sampler=sampler,
        loss=LOSSES[args.loss],
        data=dataclasses.replace(energy.data, batch_size=32),
    )
    cfg = SyntheticPipelineConfig(
        train_episodes=args.episodes,
        energy_episodes=args.energy_episodes,
        bc=BCConfig(steps=args.bc_steps, batch_size=64, eval_every=args.bc_steps),
        energy=energy,
        sampler=sampler,
        num_candidates=args.candidates,
        heldout_episodes=args.heldout_episodes,
        context_layer=args.context_layer,
        seed=args.seed,
    )
    result = run_synthetic_pipeline(args.out, cfg)
    shown = {k: v for k, v in result.items() if k not in ("policy", "model")}
    print(json.dumps(shown, indent=2, default=float))
    (args.out / "result.json").write_text(json.dumps(shown, indent=2, default=float))


if __name__ == "__main__":
    main()
