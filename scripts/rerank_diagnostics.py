"""Why a trained head does or does not beat the base chunk: held-out diagnostics of a synthetic run.

    .venv/bin/python scripts/train_energy_synthetic.py --out runs/syn --energy-steps 2000 --loss listwise
    .venv/bin/python scripts/rerank_diagnostics.py runs/syn

For the run's policy and head, on two held-out splits (val: episodes of seed 3, test: seed 2), at
N candidates and for each sampler setting:
- base / chosen / oracle chunk L1, split into motion dims and the gripper dim;
- the mean within-window Spearman correlation of energy and true L1;
- a proximity prior: choose argmin E(c) + lam * mean|c - base| for a sweep of lam, with the share
  of the oracle gain recovered (lam is meant to be picked on val and read on test);
- an energy-weighted mean of the candidates (softmax(-E / T) weights, the gripper kept from the
  base chunk), as sampling-based MPC would average them: if the head knew anything the policy
  does not, some T would land closer to the expert than the base chunk;
- the head's implied target (descend E from the base chunk, gripper fixed): its L1 to the expert
  and the cosine between its error and the policy's (near 1 = the head re-learnt the policy);
- the selection ceiling: the share an ideal scorer whose guess sits at f x the base error would
  recover, when that error repeats the policy's (shrunk) or is independent of it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from energy_rerank.candidates import CandidateSampler, SamplerConfig
from energy_rerank.energy import EnergyModel
from energy_rerank.policy.loading import load_policy
from energy_rerank.synthetic import GRIPPER_DIM, SyntheticConfig, SyntheticTask
from energy_rerank.training.policy_data import PolicyWindows
from energy_rerank.training.rerank_eval import ceiling_shares, implied_target

LAMBDAS = (0.0, 1.0, 3.0, 10.0, 30.0, 100.0)
TEMPERATURES = (0.03, 0.1, 0.3, 1.0, 3.0, float("inf"))


@torch.no_grad()
def collect(policy, model, sampler, windows, n: int) -> dict[str, torch.Tensor]:  # type: ignore[no-untyped-def]
    keys = ("energy", "err", "motion", "grip", "dist", "mean_err", "cands", "expert", "implied")
    out: dict[str, list[torch.Tensor]] = {k: [] for k in keys}
    for start in range(0, len(windows), 64):
        ids = torch.arange(start, min(len(windows), start + 64))
        inputs, expert = windows.gather(ids)
        proposals = policy.propose_inputs(inputs)
        cands = sampler.sample(proposals, n, seeds=[int(i) for i in ids])  # [B, N, H, A]
        ctx = model.encode_context(proposals.context.float(), proposals.valid)
        out["energy"].append(model.score(ctx, cands))
        out["implied"].append(implied_target(model, ctx, proposals.base.float(), fixed_dims=(GRIPPER_DIM,)))
        out["cands"].append(cands)
        out["expert"].append(expert)
        diff = (cands - expert[:, None]).abs()  # [B, N, H, A]
        motion = [d for d in range(diff.shape[-1]) if d != GRIPPER_DIM]
        out["err"].append(diff.mean((2, 3)))
        out["motion"].append(diff[..., motion].mean((2, 3)))
        out["grip"].append(diff[..., GRIPPER_DIM].mean(2))
        out["dist"].append((cands - cands[:, :1]).abs().mean((2, 3)))
        energies = out["energy"][-1]
        means = []
        for t in TEMPERATURES:
            w = torch.softmax(-energies / t, 1) if t != float("inf") else torch.full_like(energies, 1 / n)
            avg = (w[..., None, None] * cands).sum(1)  # [B, H, A]
            avg[..., GRIPPER_DIM] = cands[:, 0, :, GRIPPER_DIM]  # binary: the base chunk's
            means.append((avg - expert).abs().mean((1, 2)))
        out["mean_err"].append(torch.stack(means, 1))  # [B, len(TEMPERATURES)]
    return {k: torch.cat(v) for k, v in out.items()}


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean over rows of the rank correlation of a[i] and b[i]."""
    ra, rb = a.argsort(1).argsort(1).float(), b.argsort(1).argsort(1).float()
    ra, rb = ra - ra.mean(1, keepdim=True), rb - rb.mean(1, keepdim=True)
    return float(((ra * rb).sum(1) / (ra.norm(dim=1) * rb.norm(dim=1))).mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path, help="work directory of scripts/train_energy_synthetic.py")
    ap.add_argument("--candidates", type=int, default=64, help="N (default: %(default)s)")
    ap.add_argument("--episodes", type=int, default=12, help="held-out episodes per split (default: %(default)s)")
    args = ap.parse_args()
    policy = load_policy(args.run / "policy")
    policy.eval()
    model = EnergyModel.from_pretrained(args.run / "energy").eval()
    task = SyntheticTask(SyntheticConfig())
    for mode in ("flip", "keep"):
        sampler = CandidateSampler.for_policy(policy, SamplerConfig(sigmas=(0.02, 0.05, 0.1), gripper_mode=mode))
        for split, seed in (("val", 3), ("test", 2)):
            r = collect(policy, model, sampler, PolicyWindows(policy, task.windows(task.episodes(args.episodes, seed))),
                        args.candidates)  # fmt: skip
            base, oracle = float(r["err"][:, 0].mean()), float(r["err"].min(1).values.mean())
            pick = r["energy"].argmin(1, keepdim=True)

            def at(key: str, idx: torch.Tensor, r: dict = r) -> float:
                return float(r[key].gather(1, idx).mean())

            print(f"gripper {mode:4} {split:4}: base {base:.4f} (motion {at('motion', pick * 0):.4f}, gripper "
                  f"{at('grip', pick * 0):.4f})  chosen {at('err', pick):.4f} (motion {at('motion', pick):.4f}, "
                  f"gripper {at('grip', pick):.4f})  oracle {oracle:.4f}  spearman(E, L1) "
                  f"{spearman(r['energy'], r['err']):.3f}")  # fmt: skip
            row = []
            for lam in LAMBDAS:
                chosen = at("err", (r["energy"] + lam * r["dist"]).argmin(1, keepdim=True))
                row.append(f"lam {lam:g}: {chosen:.4f} ({(base - chosen) / (base - oracle):+.3f})")
            print("    prior sweep, L1 (share of oracle gain): " + ", ".join(row))
            row = []
            for j, t in enumerate(TEMPERATURES):
                chosen = float(r["mean_err"][:, j].mean())
                row.append(f"T {t:g}: {chosen:.4f} ({(base - chosen) / (base - oracle):+.3f})")
            print("    energy-weighted mean, L1 (share): " + ", ".join(row))
            if mode == "flip":  # the implied target does not depend on the sampler
                base_err, implied_err = r["cands"][:, 0] - r["expert"], r["implied"] - r["expert"]
                motion = [d for d in range(base_err.shape[-1]) if d != GRIPPER_DIM]
                cos = torch.nn.functional.cosine_similarity(
                    base_err[..., motion].flatten(1), implied_err[..., motion].flatten(1), dim=1
                )
                print(f"    implied target (argmin of E from the base): L1 {float(implied_err.abs().mean()):.4f}, "
                      f"cos(its error, the policy's) {float(cos.mean()):.3f}")  # fmt: skip
            c = ceiling_shares(r["cands"], r["expert"])
            print("    selection ceiling, share at target error f x base: " + ", ".join(
                f"f {f:g}: shrunk {a:+.3f} / independent {b:+.3f}"
                for f, a, b in zip(c["fractions"], c["shrunk"], c["independent"], strict=True)))  # fmt: skip


if __name__ == "__main__":
    main()
