"""ScoreCandidates goes through the one bounded queue every model call waits in: a flood beyond
the queue limit is answered RESOURCE_EXHAUSTED (SelectAction included, it is the same queue),
calls whose deadline passes while queued are dropped before they are scored, and the in-flight
gauge counts them. The real server in process with a scorer slowed down, over a real channel."""

from __future__ import annotations

import collections
import threading
import time

import grpc
import numpy as np
import pytest

from energy_rerank.candidates import CandidateSampler
from energy_rerank.energy import EnergyModel
from energy_rerank.policy.reference import ReferenceVLA
from energy_rerank.reranker import Reranker
from energy_rerank.scoring import TorchScorer
from energy_rerank.server.batcher import BatchConfig
from energy_rerank.server.config import ServerConfig
from energy_rerank.server.testing import (
    TINY_CAMERA,
    TINY_LOWDIM,
    InProcessServer,
    wait_until,
    write_tiny_bundles,
)
from energy_rerank_client._proto import rerank_pb2 as pb
from energy_rerank_client._proto import rerank_pb2_grpc

SCORE_SECONDS = 0.3
QUEUE_LIMIT = 4


class SlowScorer:
    """The torch scorer, SCORE_SECONDS slower per call; records how many calls it scored."""

    def __init__(self, inner: TorchScorer) -> None:
        self.inner, self.name = inner, inner.name
        self.calls = 0
        self.busy = threading.Event()

    def score(self, context, valid, candidates):
        self.calls += 1
        self.busy.set()
        time.sleep(SCORE_SECONDS)
        return self.inner.score(context, valid, candidates)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    policy_dir, energy_dir = write_tiny_bundles(tmp_path_factory.mktemp("bundles"))
    policy = ReferenceVLA.load(policy_dir)
    scorer = SlowScorer(TorchScorer(EnergyModel.from_pretrained(energy_dir)))
    reranker = Reranker(policy, scorer, CandidateSampler.for_policy(policy))
    config = ServerConfig(
        address="127.0.0.1:0", metrics_port=None, batch=BatchConfig(max_batch=1, queue_limit=QUEUE_LIMIT)
    )
    with InProcessServer(reranker, config) as srv, grpc.insecure_channel(srv.address) as channel:
        yield srv, scorer, rerank_pb2_grpc.RerankServiceStub(channel)


def score_request(desc) -> pb.ScoreCandidatesRequest:
    return pb.ScoreCandidatesRequest(
        hidden=pb.Tensor(dtype="float32", shape=[1, 3, desc.hidden_size], data=bytes(12 * desc.hidden_size)),
        candidates=pb.Tensor(
            dtype="float32",
            shape=[1, 2, desc.chunk_len, desc.action_dim],
            data=bytes(8 * desc.chunk_len * desc.action_dim),
        ),
        normalized=True,
    )


def select_request() -> pb.SelectActionRequest:
    obs = pb.Observation(lowdim=pb.Tensor(dtype="float32", shape=[TINY_LOWDIM], data=bytes(4 * TINY_LOWDIM)))
    obs.images[TINY_CAMERA].CopyFrom(
        pb.Image(encoding=pb.Image.RAW, data=bytes(32 * 32 * 3), height=32, width=32)
    )
    return pb.SelectActionRequest(observation=obs, params=pb.SelectParams(num_candidates=2, seed=0))


def outcome(future) -> str:
    try:
        future.result()
        return "OK"
    except grpc.RpcError as e:
        return e.code().name


def test_a_score_candidates_flood_beyond_the_queue_limit_is_refused(served):
    srv, scorer, stub = served
    desc = srv.server.servicer.reranker.proposer.description
    scorer.calls = 0
    scorer.busy.clear()
    first = stub.ScoreCandidates.future(score_request(desc), timeout=60)
    assert scorer.busy.wait(30)  # running: the queue is empty behind it
    inflight = srv.server.metrics.inflight._value.get()
    flood = [stub.ScoreCandidates.future(score_request(desc), timeout=60) for _ in range(QUEUE_LIMIT + 6)]
    assert wait_until(lambda: srv.server.servicer.batcher.depth == QUEUE_LIMIT, timeout=30)
    refused_select = stub.SelectAction.future(select_request(), timeout=60)  # the same queue, full
    codes = collections.Counter(outcome(f) for f in [first, *flood])
    assert outcome(refused_select) == "RESOURCE_EXHAUSTED"
    assert inflight == 1  # ScoreCandidates counts as in flight while it runs
    assert codes == {"OK": 1 + QUEUE_LIMIT, "RESOURCE_EXHAUSTED": 6}, codes
    assert scorer.calls == 1 + QUEUE_LIMIT  # the refused ones never reached the scorer
    errors = srv.server.metrics.errors
    assert sum(s.value for m in errors.collect() for s in m.samples if s.name.endswith("_total")) >= 7


def test_expired_deadlines_are_dropped_before_scoring(served):
    srv, scorer, stub = served
    desc = srv.server.servicer.reranker.proposer.description
    dropped = srv.server.metrics.dropped.labels(reason="deadline")
    before = dropped._value.get()
    scorer.calls = 0
    scorer.busy.clear()
    busy = stub.ScoreCandidates.future(score_request(desc), timeout=60)
    assert scorer.busy.wait(30)
    late = [stub.ScoreCandidates.future(score_request(desc), timeout=0.1) for _ in range(2)]
    assert [outcome(f) for f in late] == ["DEADLINE_EXCEEDED"] * 2
    r = busy.result()
    after = stub.ScoreCandidates(score_request(desc), timeout=60)  # the server carries on
    assert np.frombuffer(r.energies.data, np.float32).shape == (2,) and len(after.argmin) == 1
    assert scorer.calls == 2  # the busy call and the one after: the expired two were never scored
    assert dropped._value.get() - before == 2
    assert r.timing.queue_seconds < SCORE_SECONDS and after.timing.score_seconds >= SCORE_SECONDS
