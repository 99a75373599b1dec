"""Does the trained head help? Held-out chunk L1 of base, reranked and oracle best-of-N.

For each held-out window: the policy proposes, the CandidateSampler draws N candidates
(candidate 0 = base), the energy head picks its argmin. Against the expert chunk (normalised
units, mean |error| per action element):
  base      L1 of the policy's own chunk
  reranked  L1 of the lowest-energy candidate
  oracle    L1 of the candidate closest to the expert (best-of-N with a perfect scorer)
  share     (base - reranked) / (base - oracle): the part of the oracle's gain the head recovers
  gain_se   standard error of the per-window gain (base - reranked), clustered by episode

Two diagnostics of why a head does (not) help, used by scripts/rerank_diagnostics.py:
  ceiling_shares   the share an ideal scorer of a given quality could recover by selection alone
  implied_target   the chunk the head itself thinks best (descent on E), to compare with the policy's
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from energy_rerank.candidates import CandidateSampler
from energy_rerank.energy import EncodedContext, EnergyModel
from energy_rerank.evaluation.margin import episode_se
from energy_rerank.policy.reference import ReferenceVLA
from energy_rerank.selection import choose
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
    gain_se: float  # standard error of base - reranked over episodes (windows of one episode are not independent)

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
    episode: np.ndarray | None = None,
) -> RerankResult:
    """episode [W]: each held-out window's episode, for the clustered standard error (None: windows)."""
    model.eval()
    base_sum = rerank_sum = oracle_sum = picked = 0.0
    gains: list[torch.Tensor] = []
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
        choice = torch.from_numpy(choose(energies))  # [B] the server's rule, margin 0
        chosen = err.gather(1, choice[:, None])[:, 0]  # [B]
        gains.append((err[:, 0] - chosen).cpu())
        base_sum += float(err[:, 0].sum())
        rerank_sum += float(chosen.sum())
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
        gain_se=episode_se(torch.cat(gains).double().numpy(), np.arange(n) if episode is None else np.asarray(episode)),
    )


def ceiling_shares(
    cands: torch.Tensor,
    expert: torch.Tensor,
    fractions: tuple[float, ...] = (0.9, 0.75, 0.5),
    seed: int = 0,
) -> dict[str, list[float]]:
    """What an ideal scorer of a given quality could recover by selection alone.

    A scorer that ranks candidates by L1 distance to its own guess T of the expert chunk picks the
    candidate nearest T. For each fraction f, T is placed at f x the base chunk's error, either
    `shrunk` (T = expert + f (base - expert): the scorer repeats the policy's mistake, smaller) or
    `independent` (an error of the same size per window in a random direction). cands [B, N, H, A]
    with candidate 0 = base, expert [B, H, A] -> {"fractions", "shrunk", "independent"}: shares of
    the oracle's best-of-N gain (NaN when the oracle gains nothing).
    """
    err = (cands - expert[:, None]).abs().mean(dim=(2, 3))  # [B, N]
    base_l1, oracle_l1 = err[:, 0].mean(), err.min(1).values.mean()
    gain = float(base_l1 - oracle_l1)
    base_err = cands[:, 0] - expert  # [B, H, A]
    gen = torch.Generator().manual_seed(seed)
    direction = torch.randn(base_err.shape, generator=gen).to(base_err)
    direction = (
        direction / direction.abs().mean((1, 2), keepdim=True) * base_err.abs().mean((1, 2), keepdim=True)
    )

    def share(target: torch.Tensor) -> float:
        pick = (cands - target[:, None]).abs().mean(dim=(2, 3)).min(1, keepdim=True).indices  # [B, 1] nearest
        return float(base_l1 - err.gather(1, pick).mean()) / gain if gain > 0 else float("nan")

    return {
        "fractions": list(fractions),
        "shrunk": [share(expert + f * base_err) for f in fractions],
        "independent": [share(expert + f * direction) for f in fractions],
    }


def implied_target(
    model: EnergyModel,
    context: EncodedContext,
    start: torch.Tensor,
    fixed_dims: tuple[int, ...] = (),
    steps: int = 200,
    lr: float = 0.01,
) -> torch.Tensor:
    """The head's own guess of the best chunk: Adam descent on E from start [B, H, A] (dims in
    fixed_dims, e.g. a binary gripper, stay put) -> [B, H, A]. Weights are not touched."""
    context = EncodedContext(context.keys.detach(), context.values.detach(), context.valid)
    chunk = start.detach().clone().requires_grad_(True)
    opt = torch.optim.Adam([chunk], lr=lr)
    free = torch.ones(start.shape[-1], dtype=start.dtype, device=start.device)
    free[list(fixed_dims)] = 0.0
    was_training = model.training
    model.eval()
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        with torch.enable_grad():
            for _ in range(steps):
                energy = model.score(context, chunk[:, None])  # [B, 1]
                opt.zero_grad()
                energy.sum().backward()
                assert chunk.grad is not None
                chunk.grad *= free
                opt.step()
    finally:
        for p in params:
            p.requires_grad_(True)
        model.train(was_training)
    return chunk.detach()
