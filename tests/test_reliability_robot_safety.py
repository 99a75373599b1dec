"""Robot safety under injected faults: whatever the policy or the energy head does, the robot gets
a finite chunk inside the action bounds, flagged as a fallback when it is the policy's own chunk,
or an error; never a NaN, an Inf or an out-of-bounds action.

Faults are injected into the real tiny models (write_tiny_bundles): a scorer that raises or
returns NaN/Inf energies, a policy that raises or puts NaN/Inf/huge values in its chunks. The
core Reranker is checked directly, then the same faults through the real service over loopback.
"""

from __future__ import annotations

from dataclasses import replace

import grpc
import numpy as np
import pytest
import torch

from energy_rerank.reranker import PolicyFailure, Reranker, SelectParams
from energy_rerank.server.config import ServerConfig
from energy_rerank.server.models import load_reranker
from energy_rerank.server.testing import TINY_CAMERA, TINY_LOWDIM, InProcessServer, write_tiny_bundles
from energy_rerank_client import RerankClient, RetryPolicy


@pytest.fixture(scope="module")
def healthy(tmp_path_factory) -> Reranker:
    policy_dir, energy_dir = write_tiny_bundles(tmp_path_factory.mktemp("bundles"))
    return load_reranker(ServerConfig(policy_path=policy_dir, energy_path=energy_dir, backend="torch"))


def observation(seed: int = 0):
    from energy_rerank.policy.base import Observation

    rng = np.random.default_rng(seed)
    return Observation(
        images={TINY_CAMERA: rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)},
        lowdim=rng.normal(size=TINY_LOWDIM).astype(np.float32),
    )


# ------------------------------------------------------------------ fault injectors
class Scorer:
    """Wraps the real scorer; `fault` decides what comes back."""

    def __init__(self, inner, fault: str) -> None:
        self.inner, self.fault, self.name = inner, fault, inner.name

    def score(self, context, valid, candidates):
        e = self.inner.score(context, valid, candidates)  # [B, N]
        if self.fault == "raise":
            raise RuntimeError("injected scorer fault")
        if self.fault == "nan":
            return torch.full_like(e, float("nan"))
        if self.fault == "inf":
            return e.index_fill(1, torch.tensor([1]), float("-inf"))  # one candidate "infinitely good"
        if self.fault == "partial-nan":
            return e.index_fill(1, torch.tensor([2]), float("nan"))
        raise AssertionError(self.fault)


class Policy:
    """Wraps the real policy; `fault` corrupts its proposals (normalised action space)."""

    def __init__(self, inner, fault: str) -> None:
        self.inner, self.fault = inner, fault
        self.description, self.stats = inner.description, inner.stats

    def propose(self, observations):
        if self.fault == "raise":
            raise RuntimeError("injected policy fault")
        p = self.inner.propose(observations)
        if self.fault in ("nan-base", "inf-base"):
            p.base[:, 0, 0] = float("nan") if self.fault == "nan-base" else float("inf")
        elif self.fault == "inf-layers":
            p.layer_actions[:, :-1, 1, 1] = float("inf")  # earlier layers broken; the last one is the base
        elif self.fault == "huge":
            p.base.mul_(1e6)
            p.layer_actions.mul_(1e6)
        else:
            raise AssertionError(self.fault)
        return p


def with_scorer(r: Reranker, fault: str) -> Reranker:
    return Reranker(
        r.proposer, Scorer(r.scorer, fault), r.sampler, r.stats, r.model_version, r.max_candidates
    )


def with_policy(r: Reranker, fault: str) -> Reranker:
    return Reranker(
        Policy(r.proposer, fault), r.scorer, r.sampler, r.stats, r.model_version, r.max_candidates
    )


def assert_safe(r: Reranker, chunk: np.ndarray) -> None:
    h, a = r.proposer.description.chunk_len, r.proposer.description.action_dim
    assert chunk.shape == (h, a) and chunk.dtype == np.float32
    assert np.isfinite(chunk).all(), chunk
    low, high = r.low.numpy(), r.high.numpy()
    assert (chunk >= low).all() and (chunk <= high).all(), (chunk, low, high)


PARAMS = [SelectParams(num_candidates=16, seed=s) for s in range(3)]
OBS = [observation(s) for s in range(3)]


# ------------------------------------------------------------------ the core
@pytest.mark.parametrize("fault", ["raise", "nan", "inf", "partial-nan"])
def test_scorer_fault_returns_flagged_base_chunk(healthy, fault):
    base = healthy.select(OBS, [replace(p, num_candidates=1) for p in PARAMS])  # the policy's own chunk
    out = with_scorer(healthy, fault).select(OBS, PARAMS)
    for s, b in zip(out, base, strict=True):
        assert s.fallback and s.index == 0 and s.fallback_reason, s
        assert s.energies.size == 0
        assert_safe(healthy, s.chunk)
        np.testing.assert_array_equal(s.chunk, b.chunk)


@pytest.mark.parametrize("fault", ["raise", "nan-base", "inf-base"])
def test_policy_without_a_usable_chunk_is_an_error_not_a_chunk(healthy, fault):
    # An Inf base chunk must not be "rescued" by clipping it to the bounds: saturating every joint
    # because the policy overflowed is not the policy's chunk.
    with pytest.raises(PolicyFailure):
        with_policy(healthy, fault).select(OBS, PARAMS)


def test_broken_alternatives_fall_back_to_the_finite_base(healthy):
    out = with_policy(healthy, "inf-layers").select(OBS, [replace(p, return_candidates=True) for p in PARAMS])
    for s in out:
        assert_safe(healthy, s.chunk)
        assert s.candidates is None  # alternatives built from Inf chunks are not handed to a robot
        if s.index != 0:
            pytest.fail(f"a candidate built from an Inf layer chunk was chosen: {s}")
        assert s.fallback and s.fallback_reason


def test_huge_actions_are_clipped_to_the_bounds(healthy):
    for s in with_policy(healthy, "huge").select(OBS, PARAMS):
        assert_safe(healthy, s.chunk)
        assert (
            np.isclose(s.chunk, healthy.high.numpy()).any() or np.isclose(s.chunk, healthy.low.numpy()).any()
        )


# ------------------------------------------------------------------ through the service
@pytest.mark.parametrize(
    ("component", "fault", "expect"),
    [
        ("scorer", "raise", "fallback"),
        ("scorer", "nan", "fallback"),
        ("scorer", "inf", "fallback"),
        ("policy", "inf-layers", "fallback"),
        ("policy", "nan-base", "INTERNAL"),
        ("policy", "inf-base", "INTERNAL"),
        ("policy", "raise", "INTERNAL"),
    ],
)
def test_faults_through_the_service(healthy, component, fault, expect):
    broken = with_scorer(healthy, fault) if component == "scorer" else with_policy(healthy, fault)
    obs = {"images": {TINY_CAMERA: OBS[0].images[TINY_CAMERA]}, "lowdim": OBS[0].lowdim}
    with (
        InProcessServer(broken) as srv,
        RerankClient(srv.address, timeout=30, retry=RetryPolicy(attempts=1)) as c,
    ):
        info = c.info()
        if expect == "fallback":
            r = c.select(**obs, num_candidates=16, seed=0)
            assert r.fallback and r.index == 0 and r.fallback_reason and r.energies.size == 0
            assert np.isfinite(r.chunk).all()
            assert (r.chunk >= info.action_low).all() and (r.chunk <= info.action_high).all()
        else:
            with pytest.raises(grpc.RpcError) as e:
                c.select(**obs, num_candidates=16, seed=0)
            assert e.value.code().name == expect and "policy" in e.value.details(), e.value.details()
        srv.server.servicer.reranker = healthy  # the same server answers normally once healthy again
        r = c.select(**obs, num_candidates=16, seed=0)
        assert not r.fallback and np.isfinite(r.chunk).all()
