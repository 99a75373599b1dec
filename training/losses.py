"""Energy losses, all computed from one shared context encoding.

One scoring pass per batch: the context is projected once (`encode_context`, [B, S, D] in,
linear in B) and every candidate row is scored against it with `score`:

    rows of sample i = [expert_0 .. expert_{B-1}  |  explicit negatives of i]   # [B, B + M, H, A]
    E[:, :B] is the in-batch matrix E[i, j] = E(context_i, expert_j); E[:, B:] the negatives.

The seed instead copied the context B times (`expand(B, B, S, D)`), paying B x the memory and
compute of the context projection; `seed_copy_energy_matrix` keeps that form only as a reference.

Terms (weights in LossConfig):
- in-batch InfoNCE: logits = -E / tau, the diagonal is the positive;
- InfoNCE with explicit negatives: layer actions except the last, Gaussian noise around the
  expert (and optionally around the base chunk, like inference candidates), temporally
  shuffled expert chunks, other samples' expert chunks;
- margin: relu(margin + E_pos - E_neg). (The seed wrote relu(E_neg - E_pos + margin), which
  rewards E_neg < E_pos: lower energy is better, so the sign is flipped here.)
- the seed's mixed schedule: alpha = min(1, step / ramp); alpha * InfoNCE + (1 - alpha) * margin;
- diversity regulariser relu(min_std - std(E)) against collapse;
- listwise ranking (not in the seed): over the explicit negatives the target distribution is
  softmax(-L1(negative, expert) / listwise_temperature), so the head is also taught the *order*
  among imperfect chunks, which is what reranking policy candidates needs (InfoNCE alone only
  teaches "expert beats everything"). Best paired with `sampler_candidates` negatives.
  With `listwise_gain_share` > 0 a share of each sample's weight follows what choosing well is
  worth there: the base chunk's L1 to the expert minus the best negative's (normalised to mean 1
  over the batch). Most steps of an episode offer almost nothing over the base chunk, and a
  uniform average spends the head's capacity there; the steps where the policy is far off, and a
  candidate is not, are the ones that decide an episode. The uniform rest keeps the head ranking
  on the other steps too, where a wrong switch still costs.
tau is fixed, or adaptive: max(tau, 2 * std(E)) with std(E) detached. Logits are clamped.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F

from energy_rerank.candidates import CandidateSampler
from energy_rerank.energy import EnergyModel
from energy_rerank.policy.base import Proposals
from energy_rerank.training.cache import FeatureBatch

LossSchedule = Literal["fixed", "mixed"]


@dataclass(frozen=True)
class NegativesConfig:
    """Explicit negatives per sample, in normalised action units."""

    layer: bool = True  # layer actions except the last (the last is the policy's own chunk)
    noise_sigmas: tuple[float, ...] = (0.1, 0.3, 0.5)  # Gaussian perturbations of the expert chunk
    base_noise_sigmas: tuple[float, ...] = ()  # Gaussian perturbations of the base chunk (inference-like)
    shuffled: int = 1  # expert chunks with their time steps permuted
    other_samples: int = 1  # other samples' expert chunks
    sampler_candidates: int = 0  # chunks from the inference CandidateSampler around the base (pair with listwise)

    def count(self, layers: int) -> int:
        """M: negatives per sample given L layer chunks."""
        return (
            (layers - 1 if self.layer else 0)
            + len(self.noise_sigmas)
            + len(self.base_noise_sigmas)
            + self.shuffled
            + self.other_samples
            + self.sampler_candidates
        )


@dataclass(frozen=True)
class LossConfig:
    """Which energy loss terms to use and how they are weighted."""

    tau: float = 1.0  # InfoNCE temperature in energy units (the seed's 0.5 with sigmoid was too small)
    adaptive_tau: bool = False  # tau_eff = max(tau, 2 * std(E)) (a fix of the seed's post-mortem)
    logit_clamp: float = 50.0  # logits are clamped to [-clamp, clamp] before the softmax
    inbatch_weight: float = 1.0  # in-batch InfoNCE over the B x B matrix
    negatives_weight: float = 1.0  # InfoNCE against the explicit negatives
    margin_weight: float = 0.0  # hinge term (ignored by the "mixed" schedule, which sets its own)
    margin: float = 0.5  # hinge margin in energy units
    schedule: LossSchedule = "fixed"  # "mixed": InfoNCE * alpha + margin * (1 - alpha), alpha ramps to 1
    mixed_ramp_steps: int = 10_000  # steps for alpha to reach 1 in the mixed schedule (seed: 10k)
    diversity_weight: float = 0.0  # weight of relu(diversity_min_std - std(E)) (seed: 0.01)
    diversity_min_std: float = 0.1  # energy std below which the regulariser pushes back
    listwise_weight: float = 0.0  # weight of the listwise ranking term over the explicit negatives
    listwise_temperature: float = 0.05  # L1 distance scale of its soft targets (normalised action units)
    listwise_gain_share: float = 0.0  # share of a sample's listwise weight set by base L1 - best L1 (0: uniform)
    negatives: NegativesConfig = field(default_factory=NegativesConfig)  # explicit negatives

    def __post_init__(self) -> None:
        if not self.tau > 0:
            raise ValueError(f"tau must be > 0, got {self.tau}")
        if not 0.0 <= self.listwise_gain_share <= 1.0:
            raise ValueError(f"listwise_gain_share must be in [0, 1], got {self.listwise_gain_share}")
        if self.schedule not in ("fixed", "mixed"):
            raise ValueError(f"schedule must be 'fixed' or 'mixed', got {self.schedule!r}")


# Named losses for the command lines (`energy-rerank train --loss`, scripts/train_energy_synthetic.py).
LOSS_PRESETS: dict[str, LossConfig] = {
    # The seed's InfoNCE family: in-batch plus explicit negatives (layer chunks, noise around the
    # expert, shuffled and other samples' chunks). Teaches "the expert beats everything".
    "infonce": LossConfig(),
    # Ranking among what the server will rank (48 sampler candidates around the base chunk plus the
    # layer chunks) against their true L1 to the expert, with a little InfoNCE to keep the expert
    # lowest. Every head measured to beat its base chunk was trained with it (docs/results.md).
    "listwise": LossConfig(
        inbatch_weight=0.1,
        negatives_weight=0.1,
        listwise_weight=1.0,
        listwise_temperature=0.02,
        negatives=NegativesConfig(noise_sigmas=(), shuffled=0, other_samples=0, sampler_candidates=48),
    ),
}
# The same ranking, weighted towards the samples where a candidate beats the base chunk by most.
LOSS_PRESETS["listwise-gain"] = dataclasses.replace(LOSS_PRESETS["listwise"], listwise_gain_share=0.5)


@dataclass
class LossOutput:
    loss: torch.Tensor  # scalar, differentiable
    metrics: dict[str, torch.Tensor]  # detached scalars for monitoring


def build_negatives(
    batch: FeatureBatch,
    cfg: NegativesConfig,
    generator: torch.Generator,
    sampler: CandidateSampler | None = None,
) -> torch.Tensor:
    """Explicit negatives [B, M, H, A] for each sample (M = cfg.count(L))."""
    expert = batch.expert  # [B, H, A]
    b, h, a = expert.shape
    dev, dt = expert.device, expert.dtype
    parts: list[torch.Tensor] = []
    if cfg.layer and batch.layer_actions.shape[1] > 1:
        parts.append(batch.layer_actions[:, :-1])  # [B, L-1, H, A]

    def noise() -> torch.Tensor:
        return torch.randn(b, h, a, generator=generator, device=dev, dtype=dt)

    parts += [(expert + s * noise())[:, None] for s in cfg.noise_sigmas]
    parts += [(batch.base + s * noise())[:, None] for s in cfg.base_noise_sigmas]
    for _ in range(cfg.shuffled):
        perm = torch.rand(b, h, generator=generator, device=dev).argsort(1)  # [B, H] per-sample order
        parts.append(torch.gather(expert, 1, perm[..., None].expand(b, h, a))[:, None])
    if cfg.other_samples and b > 1:
        shifts = torch.randperm(b - 1, generator=generator, device=dev)[: cfg.other_samples] + 1
        parts += [torch.roll(expert, int(k), dims=0)[:, None] for k in shifts]  # no sample sees itself
    if cfg.sampler_candidates:
        if sampler is None:
            raise ValueError("NegativesConfig.sampler_candidates > 0 needs a CandidateSampler")
        # Exactly what the server will rank: base, layer chunks, noise and gripper variants.
        proposals = Proposals(batch.context, batch.valid, batch.layer_actions, batch.base)
        seeds = torch.randint(0, 2**62, (b,), generator=generator, device=dev).tolist()
        parts.append(sampler.sample(proposals, cfg.sampler_candidates, seeds=seeds).to(dev, dt))
    if not parts:
        return expert.new_zeros(b, 0, h, a)
    return torch.cat(parts, 1)


def effective_tau(energies: torch.Tensor, cfg: LossConfig) -> torch.Tensor:
    tau = torch.as_tensor(cfg.tau, dtype=energies.dtype, device=energies.device)
    if cfg.adaptive_tau:
        tau = torch.maximum(tau, 2.0 * energies.detach().std())
    return tau


def energy_loss(
    model: EnergyModel,
    batch: FeatureBatch,
    cfg: LossConfig,
    step: int,
    generator: torch.Generator,
    sampler: CandidateSampler | None = None,
) -> LossOutput:
    """The configured energy loss for one batch, plus monitoring metrics."""
    b = len(batch)
    negatives = build_negatives(batch, cfg.negatives, generator, sampler)  # [B, M, H, A]
    m = negatives.shape[1]
    ctx = model.encode_context(batch.context, batch.valid)  # context projected once: [B, S, D] -> keys/values
    rows = torch.cat([batch.expert[None].expand(b, *batch.expert.shape), negatives], 1)  # [B, B + M, H, A]
    energies = model.score(ctx, rows)  # [B, B + M]
    matrix, e_negs = energies[:, :b], energies[:, b:]  # [B, B], [B, M]
    e_pos = matrix.diagonal()  # [B]
    tau = effective_tau(energies, cfg)
    logits = (-energies / tau).clamp(-cfg.logit_clamp, cfg.logit_clamp)  # [B, B + M]

    zero = energies.new_zeros(())
    target = torch.arange(b, device=energies.device)
    inbatch = F.cross_entropy(logits[:, :b], target) if b > 1 else zero
    if m:
        # Column 0 of the explicit problem is the sample's own expert chunk.
        explicit_logits = torch.cat([logits[:, :b].diagonal()[:, None], logits[:, b:]], 1)  # [B, 1 + M]
        explicit = F.cross_entropy(explicit_logits, torch.zeros(b, dtype=torch.long, device=energies.device))
        margin = F.relu(cfg.margin + e_pos[:, None] - e_negs).mean()
        listwise = listwise_loss(
            logits[:, b:], batch.expert, negatives, cfg.listwise_temperature,
            base=batch.base, gain_share=cfg.listwise_gain_share,
        )
    else:
        explicit = margin = listwise = zero
    diversity = F.relu(cfg.diversity_min_std - energies.std())

    info = cfg.inbatch_weight * inbatch + cfg.negatives_weight * explicit
    if cfg.schedule == "mixed":
        alpha = min(1.0, step / max(1, cfg.mixed_ramp_steps))
        total = alpha * info + (1 - alpha) * margin
    else:
        total = info + cfg.margin_weight * margin
    total = total + cfg.diversity_weight * diversity + cfg.listwise_weight * listwise

    with torch.no_grad():
        off = ~torch.eye(b, dtype=torch.bool, device=energies.device)
        e_neg_all = torch.cat([matrix[off], e_negs.reshape(-1)])
        metrics = {
            "loss": total.detach(),
            "loss_inbatch": inbatch.detach(),
            "loss_negatives": explicit.detach(),
            "loss_margin": margin.detach(),
            "loss_listwise": listwise.detach(),
            "E_pos": e_pos.mean(),
            "E_neg": e_neg_all.mean() if e_neg_all.numel() else zero,
            "E_min": energies.min(),
            "E_max": energies.max(),
            "E_std": energies.std(),
            "logit_min": logits.min(),
            "logit_max": logits.max(),
            "tau": tau.detach(),
            # Share of samples whose expert chunk beats every explicit negative.
            "rank_acc": (e_pos[:, None] < e_negs).all(1).float().mean() if m else zero,
            # Share of contexts that pick their own expert chunk out of the batch.
            "inbatch_acc": (matrix.argmin(1) == target).float().mean(),
        }
        metrics["E_gap"] = metrics["E_neg"] - metrics["E_pos"]
    return LossOutput(total, metrics)


def listwise_loss(
    logits: torch.Tensor,
    expert: torch.Tensor,
    negatives: torch.Tensor,
    temperature: float,
    base: torch.Tensor | None = None,
    gain_share: float = 0.0,
) -> torch.Tensor:
    """logits [B, M] of negatives [B, M, H, A] -> cross-entropy against softmax(-L1 to expert / T).

    With base [B, H, A] and gain_share s, sample i weighs (1 - s) + s * gain_i / mean(gain), where
    gain = L1(base) - min L1(negatives), clamped at 0 (uniform when no sample gains anything)."""
    dist = (negatives - expert[:, None]).abs().mean(dim=(2, 3))  # [B, M] mean L1 to the expert
    target = torch.softmax(-dist / temperature, dim=1)
    per_sample = -(target * torch.log_softmax(logits, dim=1)).sum(1)  # [B]
    if base is None or gain_share == 0:
        return per_sample.mean()
    gain = ((base - expert).abs().mean(dim=(1, 2)) - dist.min(1).values).clamp_min(0)  # [B]
    if not bool(gain.sum() > 0):
        return per_sample.mean()
    weight = (1 - gain_share) + gain_share * gain / gain.mean()  # [B], mean 1
    return (per_sample * weight).mean()


def seed_copy_energy_matrix(
    model: EnergyModel, hidden: torch.Tensor, valid: torch.Tensor, actions: torch.Tensor
) -> torch.Tensor:
    """The seed's B x B matrix: context replicated B times (B*B rows through the context MLP).

    hidden [B, S, D], valid [B, S], actions [B, H, A] -> [B, B]. Reference only: O(B^2) memory.
    """
    b, s, d = hidden.shape
    h_rep = hidden.unsqueeze(1).expand(b, b, s, d).reshape(b * b, s, d)
    v_rep = valid.unsqueeze(1).expand(b, b, s).reshape(b * b, s)
    a_rep = actions.unsqueeze(0).expand(b, *actions.shape).reshape(b * b, *actions.shape[1:])
    return model(h_rep, a_rep, v_rep).view(b, b)
