"""One hostile observation in a batch of good ones: low-dim values of 1e38 are finite, pass
validation, and make the policy's chunk non-finite. The batch fails, its requests are rerun one
by one, the good ones are answered OK (having shared the batch) and the hostile one gets
INVALID_ARGUMENT naming the element it sent (not INTERNAL: the caller sent it). The real server
in process (embedded default), a real channel, a batching delay that gathers them into one batch."""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest

from energy_rerank.server.batcher import BatchConfig
from energy_rerank.server.config import ServerConfig
from energy_rerank.server.models import load_reranker
from energy_rerank.server.testing import InProcessServer, embedded_default_present
from energy_rerank_client._proto import rerank_pb2 as pb
from energy_rerank_client._proto import rerank_pb2_grpc

GOOD = 7


@pytest.fixture(scope="module")
def stub():
    assert embedded_default_present(), "embedded default missing: run `make assets`"
    reranker = load_reranker(ServerConfig(backend="torch"))
    batch = BatchConfig(max_batch=GOOD + 1, max_delay_us=300_000)  # waits until all have arrived
    config = ServerConfig(address="127.0.0.1:0", metrics_port=None, batch=batch)
    with InProcessServer(reranker, config) as srv, grpc.insecure_channel(srv.address) as channel:
        s = rerank_pb2_grpc.RerankServiceStub(channel)
        yield s, s.GetModelInfo(pb.GetModelInfoRequest(), timeout=30)


def request(lowdim: np.ndarray, seed: int) -> pb.SelectActionRequest:
    t = pb.Tensor(dtype="float32", shape=[lowdim.size], data=lowdim.astype(np.float32).tobytes())
    return pb.SelectActionRequest(
        observation=pb.Observation(lowdim=t), params=pb.SelectParams(num_candidates=8, seed=seed)
    )


def test_the_good_ones_are_answered_and_the_hostile_one_is_named(stub):
    s, info = stub
    rng = np.random.default_rng(0)
    hostile = np.full(info.lowdim_dim, 1e38, np.float32)
    requests = [request(rng.normal(size=info.lowdim_dim), i) for i in range(GOOD)]
    requests.insert(GOOD // 2, request(hostile, 99))
    with ThreadPoolExecutor(len(requests)) as pool:
        futures = [pool.submit(s.SelectAction, r, timeout=60) for r in requests]
        outcomes = []
        for f in futures:
            try:
                outcomes.append(f.result())
            except grpc.RpcError as e:
                outcomes.append(e)
    bad = outcomes.pop(GOOD // 2)
    assert isinstance(bad, grpc.RpcError) and bad.code() == grpc.StatusCode.INVALID_ARGUMENT, bad
    assert re.match(r"observation\.lowdim\[\d+\]: 1e\+38 is \S+ standard deviations", bad.details()), (
        bad.details()
    )
    assert "the policy overflows on it" in bad.details()
    for r in outcomes:
        assert not isinstance(r, grpc.RpcError), r
        chunk = np.frombuffer(r.chunk.data, np.float32)
        assert np.isfinite(chunk).all() and not r.fallback
        assert r.batch_size == GOOD + 1  # it shared the batch the hostile one broke


def test_1e37_is_still_served_and_1e38_alone_is_named(stub):
    """The bound is the policy's overflow, not a guess: what it can take it is given."""
    s, info = stub
    r = s.SelectAction(request(np.full(info.lowdim_dim, 1e37), 1), timeout=60)
    assert np.isfinite(np.frombuffer(r.chunk.data, np.float32)).all()
    with pytest.raises(grpc.RpcError) as e:
        s.SelectAction(request(np.full(info.lowdim_dim, 1e38), 1), timeout=60)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert e.value.details().startswith("observation.lowdim["), e.value.details()
