"""CandidateSampler: order, bounds, binary gripper, determinism, prefix and batching properties."""

from __future__ import annotations

import pytest
import torch

from energy_rerank.candidates import MAX_CANDIDATES, CandidateSampler, SamplerConfig
from energy_rerank.policy.base import Proposals

B, L, H, A = 3, 4, 8, 7
GRIP = 6


def make_proposals(batch: int = B, seed: int = 0) -> Proposals:
    g = torch.Generator().manual_seed(seed)
    layers = torch.rand(batch, L, H, A, generator=g) * 1.6 - 0.8  # inside the bounds
    layers[..., GRIP] = torch.where(torch.rand(batch, L, H, generator=g) > 0.5, 1.0, -1.0)
    return Proposals(
        context=torch.randn(batch, 5, 16, generator=g),
        valid=torch.ones(batch, 5, dtype=torch.bool),
        layer_actions=layers,
        base=layers[:, -1].clone(),
    )


def sampler(**kw) -> CandidateSampler:
    return CandidateSampler(SamplerConfig(**kw), -torch.ones(A), torch.ones(A))


def test_candidate_zero_is_base_then_layers_latest_first() -> None:
    p = make_proposals()
    c = sampler().sample(p, 16, seeds=[1, 2, 3])
    assert c.shape == (B, 16, H, A)
    assert torch.equal(c[:, 0], p.base)
    assert torch.equal(c[:, 1:L], p.layer_actions[:, [2, 1, 0]])  # all but the last, latest first
    chosen = sampler(layers=(0, -2)).sample(p, 3, seeds=[0, 0, 0])
    assert torch.equal(chosen[:, 1], p.layer_actions[:, 0]) and torch.equal(
        chosen[:, 2], p.layer_actions[:, 2]
    )


def test_all_candidates_within_bounds() -> None:
    p = make_proposals()
    low = torch.tensor([-0.5, -1, -1, -0.2, -1, -1, -1.0])
    high = torch.tensor([0.5, 1, 0.3, 0.2, 1, 1, 1.0])
    s = CandidateSampler(SamplerConfig(sigmas=(2.0,)), low, high)
    c = s.sample(p, 256, seeds=[0, 1, 2])
    assert bool((c >= low).all()) and bool((c <= high).all())
    assert bool((c[..., 0] == 0.5).any()), "large sigma should hit the bound: clipping did happen"


@pytest.mark.parametrize("mode", ["keep", "flip", "vote"])
def test_gripper_values_stay_in_the_valid_set(mode: str) -> None:
    p = make_proposals()
    p.base[..., GRIP] = 0.3  # a regression head's continuous gripper output is snapped too
    c = sampler(gripper_mode=mode, sigmas=(0.5,)).sample(p, 128, seeds=[0, 1, 2])
    assert set(c[..., GRIP].unique().tolist()) <= {-1.0, 1.0}


def test_gripper_is_never_gaussian() -> None:
    p = make_proposals()
    c = sampler(gripper_mode="keep", sigmas=(1.0,)).sample(p, 64, seeds=[5, 6, 7])
    k = L  # first noise candidate
    assert torch.equal(c[:, k:, :, GRIP], p.base[:, None, :, GRIP].expand(-1, 64 - k, -1))
    assert not torch.equal(c[:, k:, :, :GRIP], p.base[:, None, :, :GRIP].expand(-1, 64 - k, -1, -1))


def test_flip_mode_switches_the_gripper_on_odd_noise_candidates() -> None:
    p = make_proposals()
    c = sampler(gripper_mode="flip").sample(p, 64, seeds=[1, 2, 3])
    noise = c[:, L:, :, GRIP]  # [B, M, H]
    base = p.base[:, None, :, GRIP]
    assert torch.equal(noise[:, 0::2], base.expand_as(noise[:, 0::2]))  # even ones keep
    flipped = noise[:, 1::2] != base
    assert bool(flipped.any(dim=2).all()), "every odd noise candidate flips from some step on"
    # flipped steps form a suffix: once flipped, stays flipped to the end of the chunk
    assert bool((flipped.int().diff(dim=2) >= 0).all())


def test_vote_mode_takes_the_layer_majority() -> None:
    p = make_proposals(batch=1)
    p.layer_actions[..., GRIP] = 1.0
    p.layer_actions[0, :, 2, GRIP] = torch.tensor([-1.0, -1.0, -1.0, 1.0])  # step 2: 3 of 4 layers say open
    base = p.layer_actions[:, -1].clone()
    p = Proposals(p.context, p.valid, p.layer_actions, base)
    c = sampler(gripper_mode="vote").sample(p, 32, seeds=[0])
    expect = torch.ones(H)
    expect[2] = -1.0  # base (closed) + 3 layers open out of 5 votes -> open
    assert torch.equal(c[0, L:, :, GRIP], expect.expand(32 - L, H))


def test_same_seed_same_candidates_and_other_seed_differs() -> None:
    p = make_proposals()
    s = sampler()
    a, b = s.sample(p, 64, seeds=[1, 2, 3]), s.sample(p, 64, seeds=[1, 2, 3])
    assert torch.equal(a, b)
    assert not torch.equal(a, s.sample(p, 64, seeds=[4, 2, 3]))
    assert not torch.equal(s.sample(p, 64), s.sample(p, 64)), "seed None draws fresh noise"


def test_n_equals_one_returns_only_the_base() -> None:
    p = make_proposals()
    c = sampler().sample(p, 1, seeds=[0, 1, 2])
    assert c.shape == (B, 1, H, A) and torch.equal(c[:, 0], p.base)


def test_prefix_property() -> None:
    p = make_proposals()
    s = sampler(perturb_layers=True, gripper_mode="flip")
    full = s.sample(p, 300, seeds=[3, 4, 5], sigma_scales=[1.0, 0.5, 2.0])
    for k in (1, 2, L, L + 1, 63, 64, 65, 129):
        assert torch.equal(full[:, :k], s.sample(p, k, seeds=[3, 4, 5], sigma_scales=[1.0, 0.5, 2.0])), k


def test_batching_does_not_change_a_rows_candidates() -> None:
    p = make_proposals()
    s = sampler()
    batch = s.sample(p, 50, seeds=[7, 8, 9], sigma_scales=[1.0, 0.0, 2.0])
    for i, (seed, scale) in enumerate([(7, 1.0), (8, 0.0), (9, 2.0)]):
        one = Proposals(
            p.context[i : i + 1], p.valid[i : i + 1], p.layer_actions[i : i + 1], p.base[i : i + 1]
        )
        assert torch.equal(batch[i], s.sample(one, 50, seeds=[seed], sigma_scales=[scale])[0])


def test_sigma_schedule_and_zero_scale() -> None:
    p = make_proposals()
    s = sampler(sigmas=(0.1, 0.5))
    c = s.sample(p, L + 600, seeds=[0, 1, 2])
    dev = (c[:, L:, :, :GRIP] - p.base[:, None, :, :GRIP]).std(dim=(0, 2, 3))  # per noise candidate
    assert dev[0::2].mean() < dev[1::2].mean() / 2  # 0.1 and 0.5 alternate
    zero = s.sample(p, 40, seeds=[0, 1, 2], sigma_scales=[0.0] * B)
    assert torch.equal(zero[:, L:], p.base[:, None].expand(-1, 40 - L, -1, -1))  # copies of the base


def test_n_out_of_range_is_a_clear_error() -> None:
    p = make_proposals()
    for bad in (0, MAX_CANDIDATES + 1, -3):
        with pytest.raises(ValueError, match="num_candidates"):
            sampler().sample(p, bad)
    assert sampler().sample(p, MAX_CANDIDATES, seeds=[0, 1, 2]).shape == (B, MAX_CANDIDATES, H, A)
    with pytest.raises(ValueError, match="seeds"):
        sampler().sample(p, 4, seeds=[1])
    with pytest.raises(ValueError, match="layers"):
        sampler(layers=(L,)).sample(p, 4)
    with pytest.raises(ValueError, match="max_candidates"):
        SamplerConfig(max_candidates=MAX_CANDIDATES + 1)


def test_config_json_round_trip_and_for_policy() -> None:
    from energy_rerank.config import config_from_dict, config_to_dict
    from energy_rerank.normalize import NormStats
    from energy_rerank.policy.base import PolicyDescription

    cfg = SamplerConfig(layers=(0, 2), sigmas=(0.2,), gripper_mode="vote", dim_sigmas=(1.0,) * A)
    assert config_from_dict(SamplerConfig, config_to_dict(cfg)) == cfg

    class Policy:  # the two attributes for_policy reads
        description = PolicyDescription("p", 16, H, A, L, gripper_dims=(GRIP,))
        stats = NormStats.from_data(torch.rand(100, A) * 4 - 2, binary_dims=(GRIP,))

    s = CandidateSampler.for_policy(Policy(), SamplerConfig(gripper_dims=()))  # type: ignore[arg-type]
    assert s.config.gripper_dims == (GRIP,)
    assert bool((s.low <= -1).all()) and bool((s.high >= 1).all())
