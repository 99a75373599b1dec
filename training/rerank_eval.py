"""Does the trained head help? Held-out chunk L1 of base, reranked and oracle best-of-N.

For each held-out window: the policy proposes, the CandidateSampler draws N candidates
(candidate 0 = base), the energy head picks its argmin. Against the expert chunk (normalised
units, mean |error| per action element):
  base      L1 of the policy's own chunk
  reranked  L1 of the lowest-energy candidate
  oracle    L1 of the candidate closest to the expert (best-of-N with a perfect scorer)
  share     (base - reranked) / (base - oracle): the part of the oracle's gain the head recovers
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from energy_rerank.candidates import CandidateSampler
from energy_rerank.energy import EnergyModel
from energy_rerank.policy.reference import ReferenceVLA
from energy_rerank.training.policy_data import PolicyWindows


@dataclass(frozen=True)
class RerankResult:
    num_candidates: int  # N
    windows: int  # held-out windows evaluated
    base_l1: float  # policy's own chunk
    reranked_l1: float  # energy argmin
    oracle_l1: float  # best candidate in hindsight
    share: float  # (base - reranked) / (base - oracle); NaN when the oracle gains nothing
    picked_base: float  # how often the head kept candidate 0

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


@torch.no_grad()
def rerank_gain(
    policy: ReferenceVLA,
    model: EnergyModel,
    windows: PolicyWindows,
    sampler: CandidateSampler,
    num_candidates: int = 64,
    batch_size: int = 64,
    seed: int = 0,
) -> RerankResult:
    model.eval()
    base_sum = rerank_sum = oracle_sum = picked = 0.0
    n = len(windows)
    for start in range(0, n, batch_size):
        ids = torch.arange(start, min(n, start + batch_size))
        inputs, expert = windows.gather(ids)
        proposals = policy.propose_inputs(inputs)
        seeds = [seed * 1_000_003 + int(i) for i in ids]
        cands = sampler.sample(proposals, num_candidates, seeds=seeds)  # [B, N, H, A]
        ctx = model.encode_context(proposals.context.float(), proposals.valid)
        energies = model.score(ctx, cands)  # [B, N]
        err = (cands - expert.to(cands.device)[:, None]).abs().mean(dim=(2, 3))  # [B, N]
        choice = energies.argmin(1)  # [B]
        base_sum += float(err[:, 0].sum())
        rerank_sum += float(err.gather(1, choice[:, None]).sum())
        oracle_sum += float(err.min(1).values.sum())
        picked += float((choice == 0).sum())
    base, rerank, oracle = base_sum / n, rerank_sum / n, oracle_sum / n
    gain = base - oracle
    return RerankResult(
        num_candidates=num_candidates,
        windows=n,
        base_l1=base,
        reranked_l1=rerank,
        oracle_l1=oracle,
        share=(base - rerank) / gain if gain > 0 else float("nan"),
        picked_base=picked / n,
    )
