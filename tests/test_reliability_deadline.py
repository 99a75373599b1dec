"""A request whose deadline passes while it waits in the queue is answered DEADLINE_EXCEEDED and its
work is dropped: the model never sees it, and the server counts it as dropped.

The real server runs in process (so the test can watch what the policy is given) behind a real
loopback channel; a slowed-down tiny policy keeps the inference thread busy while the doomed
request waits behind it.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest

from energy_rerank.server.config import ServerConfig
from energy_rerank.server.models import load_reranker
from energy_rerank.server.testing import TINY_CAMERA, TINY_LOWDIM, InProcessServer, write_tiny_bundles
from energy_rerank_client import RerankClient, RetryPolicy

POLICY_SECONDS = 0.6


class RecordingSlowPolicy:
    """The tiny policy, slower, remembering the instruction of every observation it was given."""

    def __init__(self, inner) -> None:
        self.inner, self.description, self.stats = inner, inner.description, inner.stats
        self.seen: list[str] = []
        self.busy = threading.Event()

    def propose(self, observations):
        self.seen += [o.instruction for o in observations]
        self.busy.set()
        time.sleep(POLICY_SECONDS)
        return self.inner.propose(observations)


def obs(instruction: str) -> dict:
    return {
        "images": {TINY_CAMERA: np.zeros((32, 32, 3), np.uint8)},
        "lowdim": np.zeros(TINY_LOWDIM, np.float32),
        "instruction": instruction,
    }


@pytest.fixture(scope="module")
def reranker(tmp_path_factory):
    policy_dir, energy_dir = write_tiny_bundles(tmp_path_factory.mktemp("bundles"))
    r = load_reranker(ServerConfig(policy_path=policy_dir, energy_path=energy_dir, backend="torch"))
    r.proposer = RecordingSlowPolicy(r.proposer)
    return r


def test_request_expiring_in_the_queue_never_reaches_the_model(reranker):
    policy = reranker.proposer
    with (
        InProcessServer(reranker) as srv,
        RerankClient(srv.address, timeout=30, retry=RetryPolicy(attempts=1)) as client,
        ThreadPoolExecutor(2) as pool,
    ):
        policy.seen.clear()
        policy.busy.clear()
        slow = pool.submit(client.select, **obs("occupies the model"), num_candidates=4)
        assert policy.busy.wait(30), "the first request never reached the model"
        t0 = time.perf_counter()
        with pytest.raises(grpc.RpcError) as e:
            client.select(**obs("doomed"), num_candidates=4, timeout=0.15)
        waited = time.perf_counter() - t0
        assert slow.result(30).chunk.shape[0] > 0  # the request ahead of it was answered
        after = client.select(**obs("after"), num_candidates=4)  # and the server carries on
        dropped = srv.server.metrics.dropped
        n_deadline = dropped.labels(reason="deadline")._value.get()
        n_cancelled = dropped.labels(reason="cancelled")._value.get()

    assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED, e.value
    assert waited < POLICY_SECONDS, "the deadline was answered only after the busy batch"
    assert "doomed" not in policy.seen, policy.seen
    assert policy.seen == ["occupies the model", "after"], policy.seen
    assert np.isfinite(after.chunk).all()
    assert (n_deadline, n_cancelled) == (1, 0)  # the client's deadline, not a caller that went away


def test_server_side_deadline_check_drops_expired_requests(reranker):
    """Two requests queued behind a busy batch with server-side deadlines shorter than the wait:
    the batcher answers them DeadlineExpired when it reaches them, without running them."""
    from energy_rerank.policy.base import Observation
    from energy_rerank.reranker import SelectParams
    from energy_rerank.server.errors import DeadlineExpired

    policy = reranker.proposer

    def o(text: str) -> Observation:
        return Observation(
            images={TINY_CAMERA: np.zeros((32, 32, 3), np.uint8)},
            lowdim=np.zeros(TINY_LOWDIM, np.float32),
            instruction=text,
        )

    with InProcessServer(reranker) as srv:
        batcher = srv.server.servicer.batcher
        policy.seen.clear()

        async def scenario():
            import asyncio

            busy = asyncio.ensure_future(batcher.submit((o("busy"), SelectParams(num_candidates=4))))
            await asyncio.sleep(0.05)
            late = [
                batcher.submit((o(f"late{i}"), SelectParams(num_candidates=4)), timeout=0.1) for i in range(2)
            ]
            return await asyncio.gather(busy, *late, return_exceptions=True)

        results = srv.run(scenario())
        dropped = srv.server.metrics.dropped.labels(reason="deadline")._value.get()
    assert not isinstance(results[0], BaseException)
    assert all(isinstance(r, DeadlineExpired) for r in results[1:]), results
    assert policy.seen == ["busy"] and dropped == 2
