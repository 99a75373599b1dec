"""The real server (`energy-rerank serve` in a subprocess, on a loopback port, auth on) called
by the real client. Serves the embedded default when it is present in the repository, else tiny
random-weight bundles written with the models' own save methods."""

from __future__ import annotations

import math
import re
import signal
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc

from energy_rerank.energy import EnergyModel
from energy_rerank.scoring import TorchScorer
from energy_rerank.server.config import DEFAULT_ENERGY, DEFAULT_POLICY
from energy_rerank.server.testing import ServerProcess, embedded_default_present
from energy_rerank_client import RerankClient, RetryPolicy
from energy_rerank_client._proto import rerank_pb2 as pb
from energy_rerank_client.client import select_request
from energy_rerank_client.tensors import to_tensor

TOKEN = "test-token-0123"
MAX_N = 256


@pytest.fixture(scope="module")
def bundles():
    # The product's main job is `energy-rerank serve` with no arguments: test exactly that.
    assert embedded_default_present(), "embedded default missing: run `make assets`"
    return DEFAULT_POLICY, DEFAULT_ENERGY


@pytest.fixture(scope="module")
def server(bundles):
    args = ["--max-message-mb", "1", "--max-candidates", str(MAX_N)]  # no model flags: the embedded default
    with ServerProcess(args, env={"ENERGY_RERANK_TOKEN": TOKEN}) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server):
    with RerankClient(server.address, token=TOKEN, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def info(client):
    return client.info()


def observation(info, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    h, w = info.image_size or (32, 32)
    obs: dict = {
        "images": {cam: rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for cam in info.cameras},
        "instruction": "pick up the red block",
    }
    if info.state_dim:
        obs["state"] = rng.normal(size=info.state_dim).astype(np.float32)
    if info.lowdim_dim:
        obs["lowdim"] = rng.normal(size=info.lowdim_dim).astype(np.float32)
    return obs


def metrics(server) -> str:
    with urllib.request.urlopen(server.metrics_url, timeout=10) as r:
        return r.read().decode()


def metric(text: str, name: str, **labels: str) -> float:
    """Sum of a metric's samples whose labels include `labels`."""
    total = 0.0
    for line in text.splitlines():
        m = re.match(rf"^{re.escape(name)}(?:\{{(.*)\}})? (\S+)$", line)
        if m and all(f'{k}="{v}"' in (m.group(1) or "") for k, v in labels.items()):
            total += float(m.group(2))
    return total


# ------------------------------------------------------------------ good requests
def test_server_prints_where_it_listens(server):
    assert server.address.startswith("127.0.0.1:") and server.metrics_url.startswith("http://127.0.0.1:")
    assert "switch margin 0: plain argmin" in server.output  # the embedded head records no margin


def test_select_action(client, info):
    r = client.select(**observation(info), num_candidates=32, seed=1, return_candidates=True)
    assert r.chunk.shape == (info.chunk_len, info.action_dim) and r.chunk.dtype == np.float32
    assert np.isfinite(r.chunk).all()
    assert (r.chunk >= info.action_low - 1e-6).all() and (r.chunk <= info.action_high + 1e-6).all()
    assert r.energies.shape == (32,) and np.isfinite(r.energies).all()
    assert r.index == int(np.argmin(r.energies)) and not r.fallback
    assert r.candidates.shape == (32, info.chunk_len, info.action_dim)
    np.testing.assert_array_equal(r.candidates[r.index], r.chunk)
    assert r.model_version == info.model_version and r.model_version
    assert {"validation", "queue", "policy", "candidates", "score", "inference", "total"} <= set(r.timing)
    assert r.timing["total"] >= r.timing["inference"] > 0


def test_default_candidates_and_seed_reproducibility(client, info):
    a = client.select(**observation(info, 3), seed=5)
    b = client.select(**observation(info, 3), seed=5)
    assert a.energies.shape == (info.default_candidates,)
    np.testing.assert_allclose(a.energies, b.energies, atol=1e-6)
    assert a.index == b.index


def test_score_candidates_matches_in_process(client, info, bundles):
    rng = np.random.default_rng(0)
    hidden = rng.normal(size=(2, 10, info.hidden_size)).astype(np.float32)
    valid = np.ones((2, 10), bool)
    valid[1, 6:] = False
    cands = rng.uniform(-1, 1, size=(2, 5, info.chunk_len, info.action_dim)).astype(np.float32)
    r = client.score(hidden, cands, valid)
    local = TorchScorer(EnergyModel.from_pretrained(bundles[1])).score(
        torch.from_numpy(hidden), torch.from_numpy(valid), torch.from_numpy(cands)
    )
    assert r.energies.shape == (2, 5)
    np.testing.assert_allclose(r.energies, local.numpy(), atol=1e-5, rtol=0)
    np.testing.assert_array_equal(r.argmin, local.argmin(1).numpy())


def test_health_needs_no_token(server):
    with grpc.insecure_channel(server.address) as ch:
        status = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=10).status
    assert status == health_pb2.HealthCheckResponse.SERVING


# ------------------------------------------------------------------ bad requests
def _select(info, **params) -> pb.SelectActionRequest:
    return select_request(**observation(info), **params)


def _broken(info, edit) -> pb.SelectActionRequest:
    req = _select(info, num_candidates=8)
    edit(req, info)
    return req


def _set_lowdim_or_state(req, info, a):
    if not (info.lowdim_dim or info.state_dim):
        pytest.skip("the served policy reads neither lowdim nor state")
    field = req.observation.lowdim if info.lowdim_dim else req.observation.state
    field.CopyFrom(to_tensor(a))


def _first_camera(req):
    """The first camera's image (only the cameras the policy reads are decoded)."""
    if not req.observation.images:
        pytest.skip("the served policy reads no camera: images sent are ignored (test below)")
    return req.observation.images[min(req.observation.images)]


BAD_SELECT = {
    "wrong dtype": (lambda r, i: _set_lowdim_or_state(r, i, np.zeros(i.lowdim_dim or i.state_dim, np.float64)),
                    "INVALID_ARGUMENT", r"observation\.(lowdim|state): dtype 'float64', expected float32"),
    "wrong shape": (lambda r, i: _set_lowdim_or_state(r, i, np.zeros(3, np.float32)),
                    "INVALID_ARGUMENT", r"shape \[3\], expected float32 \[\d+\]"),
    "NaN": (lambda r, i: _set_lowdim_or_state(r, i, np.full(i.lowdim_dim or i.state_dim, np.nan, np.float32)),
            "INVALID_ARGUMENT", "contains NaN or Inf"),
    "empty image": (lambda r, i: _first_camera(r).ClearField("data"), "INVALID_ARGUMENT", "empty image data"),
    "undecodable image": (lambda r, i: _first_camera(r).CopyFrom(pb.Image(encoding=pb.Image.JPEG, data=b"\xff\xd8junk")),
                          "INVALID_ARGUMENT", r"images\['\w+'\]: cannot decode as JPEG"),
    "N = 0": (lambda r, i: setattr(r.params, "num_candidates", 0), "INVALID_ARGUMENT",
              rf"params\.num_candidates: 0 is outside \[1, {MAX_N}\]"),
    "N above the limit": (lambda r, i: setattr(r.params, "num_candidates", MAX_N + 1), "INVALID_ARGUMENT",
                          rf"params\.num_candidates: {MAX_N + 1} is outside"),
    "oversized message": (lambda r, i: r.observation.images["huge"].CopyFrom(pb.Image(encoding=pb.Image.PNG,
                          data=b"\0" * (2 << 20))), "RESOURCE_EXHAUSTED", "larger than max"),
}  # fmt: skip


@pytest.mark.parametrize("kind", sorted(BAD_SELECT))
def test_bad_select_input_then_good_request(client, info, kind):
    edit, code, message = BAD_SELECT[kind]
    with pytest.raises(grpc.RpcError) as e:
        client.stub.SelectAction(_broken(info, edit), metadata=client._metadata, timeout=30)
    assert e.value.code().name == code, e.value
    assert re.search(message, e.value.details()), e.value.details()
    assert np.isfinite(client.select(**observation(info), num_candidates=4).chunk).all()


def test_images_of_cameras_the_policy_does_not_read_are_ignored(client, info):
    """Not even their headers are read: junk under another camera name is answered OK."""
    req = _select(info, num_candidates=4)
    req.observation.images["not-read"].CopyFrom(pb.Image(encoding=pb.Image.JPEG, data=b"\xff\xd8junk"))
    req.observation.images["empty"].CopyFrom(pb.Image(encoding=pb.Image.PNG))
    r = client.stub.SelectAction(req, metadata=client._metadata, timeout=30)
    assert r.chunk.shape == [info.chunk_len, info.action_dim] and not r.fallback


def test_bad_score_inputs_then_good_request(client, info):
    d, h, a = info.hidden_size, info.chunk_len, info.action_dim
    good = {"hidden": np.zeros((1, 4, d), np.float32), "candidates": np.zeros((1, 3, h, a), np.float32)}
    cases = [
        ({"hidden": np.full((1, 4, d), np.inf, np.float32)}, "hidden: contains NaN or Inf"),
        ({"hidden": np.zeros((1, 0, d), np.float32)}, r"hidden: shape \[1, 0, \d+\]"),
        ({"hidden": np.zeros((1, 4, d + 1), np.float32)}, rf"expected float32\|float16 \[\?, \?, {d}\]"),
        ({"candidates": np.zeros((1, 0, h, a), np.float32)}, r"candidates: shape \[1, 0,"),
        ({"candidates": np.zeros((1, 3, h, a), np.int32)}, "candidates: dtype 'int32', expected float32"),
        ({"candidates": np.zeros((1, MAX_N + 1, h, a), np.float32)}, f"exceeds the limit {MAX_N}"),
    ]
    for override, message in cases:
        with pytest.raises(grpc.RpcError) as e:
            client.score(**{**good, **override})
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, override
        assert re.search(message, e.value.details()), e.value.details()
    assert client.score(**good).energies.shape == (1, 3)


@pytest.mark.parametrize(
    ("token", "message"), [(None, "missing 'authorization"), ("nope", "wrong bearer token")]
)
def test_auth_then_good_request(server, client, info, token, message):
    with RerankClient(server.address, token=token, retry=RetryPolicy(attempts=1)) as other:
        for call in (other.info, lambda: other.select(**observation(info), num_candidates=4)):
            with pytest.raises(grpc.RpcError) as e:
                call()
            assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED and message in e.value.details()
    assert client.info().model_version


# ------------------------------------------------------------------ batching and metrics
def test_concurrent_clients_are_batched_and_get_their_own_answers(server, client, info):
    seeds = list(range(100, 116))
    single = {s: client.select(**observation(info, s), num_candidates=32, seed=s) for s in seeds}

    def burst() -> dict:
        barrier = threading.Barrier(len(seeds))

        def one(s):
            with RerankClient(server.address, token=TOKEN, timeout=60) as c:
                barrier.wait()
                return s, c.select(**observation(info, s), num_candidates=32, seed=s)

        with ThreadPoolExecutor(len(seeds)) as pool:
            return dict(pool.map(one, seeds))

    before = metrics(server)
    for _ in range(3):  # on a loaded 2-core machine one burst may trickle in; three never have
        together = burst()
        text = metrics(server)
        multi = metric(text, "energy_rerank_batch_size_count") - metric(
            text, "energy_rerank_batch_size_bucket", le="1.0"
        )
        multi -= metric(before, "energy_rerank_batch_size_count") - metric(
            before, "energy_rerank_batch_size_bucket", le="1.0"
        )
        if multi > 0:
            break
    assert multi > 0, "no batch larger than 1 formed under 16 concurrent clients"
    assert max(r.batch_size for r in together.values()) > 1
    for s in seeds:
        assert together[s].index == single[s].index, s
        np.testing.assert_allclose(together[s].energies, single[s].energies, atol=1e-5, rtol=1e-5)
        np.testing.assert_allclose(together[s].chunk, single[s].chunk, atol=1e-5, rtol=1e-5)


def test_metrics_endpoint_after_traffic(server, client, info):
    before = metric(metrics(server), "energy_rerank_switched_total")
    chosen = [client.select(**observation(info, i), num_candidates=16, seed=i, switch_margin=0.0).index
              for i in range(4)]  # fmt: skip
    chosen += [client.select(**observation(info, i), num_candidates=16, switch_margin=math.inf).index
               for i in range(2)]  # fmt: skip
    assert chosen[4:] == [0, 0] and any(chosen[:4])  # argmin leaves the base chunk at least once here
    text = metrics(server)
    assert metric(text, "energy_rerank_switched_total") - before == sum(i != 0 for i in chosen)
    for stage in ("validation", "queue", "policy", "candidates", "score", "inference", "total"):
        assert metric(text, "energy_rerank_stage_seconds_count", method="SelectAction", stage=stage) > 0, (
            stage
        )
    assert 'energy_rerank_stage_seconds_bucket{le="0.0001",method="SelectAction",protocol="grpc",stage="score"}' in text
    assert 'le="0.05"' in text
    assert metric(text, "energy_rerank_stage_seconds_count", method="ScoreCandidates", stage="score") > 0
    assert (
        metric(text, "energy_rerank_candidates_count") > 0
        and metric(text, "energy_rerank_energy_margin_count") > 0
    )
    assert metric(text, "energy_rerank_batch_size_count") > 0
    assert "energy_rerank_queue_depth" in text
    assert metric(text, "energy_rerank_errors_total", code="INVALID_ARGUMENT") > 0
    assert metric(text, "energy_rerank_errors_total", code="UNAUTHENTICATED") > 0


# ------------------------------------------------------------------ shutdown (keep last: stops the server)
def test_sigterm_drains_and_exits(server, info):
    with RerankClient(server.address, token=TOKEN, timeout=60) as c, ThreadPoolExecutor(4) as pool:
        calls = [pool.submit(c.select, **observation(info, s), num_candidates=MAX_N) for s in range(4)]
        # wait until the server holds them, then shut it down underneath them
        while metric(metrics(server), "energy_rerank_inflight") < 1 and not all(f.done() for f in calls):
            time.sleep(0.005)
        pending = sum(not f.done() for f in calls)
        rc = server.stop(signal.SIGTERM)
        results = [f.result() for f in calls]  # raises if any in-flight call failed
    assert rc == 0, server.output
    assert pending > 0, "the calls finished before the server was stopped: nothing was in flight"
    assert all(np.isfinite(r.chunk).all() for r in results)
    assert "draining" in server.output and "stopped" in server.output
    with RerankClient(server.address, token=TOKEN, retry=RetryPolicy(attempts=1), timeout=5) as late:
        with pytest.raises(grpc.RpcError) as e:
            late.info()
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE
