"""The switch margin: a candidate replaces the policy's chunk only when its energy is lower by more
than the margin. In the core Reranker and through the real service over loopback."""

from __future__ import annotations

import math

import grpc
import numpy as np
import pytest

from energy_rerank.reranker import Reranker, SelectParams
from energy_rerank.server.config import ServerConfig
from energy_rerank.server.models import load_reranker
from energy_rerank.server.testing import TINY_CAMERA, TINY_LOWDIM, InProcessServer, write_tiny_bundles
from energy_rerank_client import RerankClient, RetryPolicy


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    return write_tiny_bundles(tmp_path_factory.mktemp("bundles"))


@pytest.fixture(scope="module")
def reranker(bundles) -> Reranker:
    policy_dir, energy_dir = bundles
    return load_reranker(ServerConfig(policy_path=policy_dir, energy_path=energy_dir, backend="torch"))


def observation(seed: int):
    from energy_rerank.policy.base import Observation

    rng = np.random.default_rng(seed)
    return Observation(
        images={TINY_CAMERA: rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)},
        lowdim=rng.normal(size=TINY_LOWDIM).astype(np.float32),
    )


@pytest.fixture(scope="module")
def switching(reranker):
    """An observation and seed whose argmin is not the base chunk, with its energy gain."""
    for seed in range(50):
        obs, params = observation(seed), SelectParams(num_candidates=16, seed=seed)
        s = reranker.select([obs], [params])[0]
        if s.index != 0:
            return obs, seed, s.index, float(s.energies[0] - s.energies[s.index])
    pytest.fail("the tiny head kept the base chunk for 50 observations; no switch to test")


def test_margin_keeps_the_base_unless_the_gain_exceeds_it(reranker, switching) -> None:
    obs, seed, index, gain = switching
    assert gain > 0

    def pick(margin: float | None, default: float = 0.0) -> int:
        r = Reranker(reranker.proposer, reranker.scorer, reranker.sampler, switch_margin=default)
        return r.select([obs], [SelectParams(num_candidates=16, seed=seed, switch_margin=margin)])[0].index

    assert pick(0.0) == index
    assert pick(gain * 0.99) == index
    assert pick(gain) == 0  # must be strictly better by more than the margin
    assert pick(math.inf) == 0
    assert pick(None, default=gain * 0.99) == index  # the reranker's default applies when unset
    assert pick(None, default=math.inf) == 0
    assert pick(0.0, default=math.inf) == index  # the request's own margin wins


@pytest.mark.parametrize("bad", [-0.1, float("nan")])
def test_bad_margins_are_refused(reranker, bad) -> None:
    with pytest.raises(ValueError, match="switch_margin"):
        reranker.select([observation(0)], [SelectParams(num_candidates=4, switch_margin=bad)])
    with pytest.raises(ValueError, match="switch_margin"):
        Reranker(reranker.proposer, reranker.scorer, reranker.sampler, switch_margin=bad)
    with pytest.raises(ValueError, match="switch_margin"):
        ServerConfig(switch_margin=bad)


def test_margin_through_the_service(reranker, switching) -> None:
    obs, seed, index, gain = switching
    kw = {
        "images": {TINY_CAMERA: obs.images[TINY_CAMERA]},
        "lowdim": obs.lowdim,
        "num_candidates": 16,
        "seed": seed,
    }
    config = ServerConfig(address="127.0.0.1:0", metrics_port=None, switch_margin=math.inf)
    never = Reranker(reranker.proposer, reranker.scorer, reranker.sampler, switch_margin=math.inf)
    with (
        InProcessServer(never, config) as srv,
        RerankClient(srv.address, timeout=30, retry=RetryPolicy(attempts=1)) as c,
    ):
        assert c.info().switch_margin == math.inf
        assert c.select(**kw).index == 0  # the server's default: never switch
        assert c.select(**kw, switch_margin=0.0).index == index
        assert c.select(**kw, switch_margin=gain * 0.99).index == index
        with pytest.raises(grpc.RpcError) as err:
            c.select(**kw, switch_margin=-1.0)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "params.switch_margin" in err.value.details()
        assert c.select(**kw).index == 0  # still serving


def test_a_bundle_carries_its_margin(bundles, tmp_path) -> None:
    import json
    import shutil

    from energy_rerank.checkpoint import BundleError, read_head_record, write_switch_margin
    from energy_rerank.server.models import with_energy_head

    policy_dir, energy_dir = bundles
    head = shutil.copytree(energy_dir, tmp_path / "head")
    plain = load_reranker(ServerConfig(policy_path=policy_dir, energy_path=head, backend="torch"))
    assert plain.switch_margin == 0.0 and read_head_record(head).switch_margin is None

    write_switch_margin(head, 2.5, {"n": 64})
    calibrated = load_reranker(ServerConfig(policy_path=policy_dir, energy_path=head, backend="torch"))
    assert calibrated.switch_margin == 2.5
    assert calibrated.model_version != plain.model_version  # another selection = another version
    flag = ServerConfig(policy_path=policy_dir, energy_path=head, backend="torch", switch_margin=0.0)
    assert load_reranker(flag).switch_margin == 0.0  # the server's flag wins

    # A hot swap brings the new head's margin along (unless the flag is set).
    swapped = with_energy_head(plain, head, ServerConfig(policy_path=policy_dir, energy_path=energy_dir))
    assert swapped.switch_margin == 2.5
    assert with_energy_head(plain, head, flag).switch_margin == 0.0

    write_switch_margin(head, math.inf, {"n": 64})
    json.loads(
        (head / "selection.json").read_text(), parse_constant=lambda c: pytest.fail(f"not strict JSON: {c}")
    )
    assert read_head_record(head).switch_margin == math.inf

    (head / "selection.json").write_text('{"switch_margin": -1}')
    with pytest.raises(BundleError, match="switch_margin"):
        read_head_record(head)
    with pytest.raises(BundleError, match="not a bundle"):
        write_switch_margin(tmp_path, 1.0, {})
