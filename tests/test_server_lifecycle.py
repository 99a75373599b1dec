"""Server lifecycle in process: reflection, health, and graceful shutdown: calls in flight (running or
queued) complete, calls arriving within the drain's accept window are served, later ones get
UNAVAILABLE, health reports NOT_SERVING first. A slowed-down tiny policy keeps calls in flight
long enough to shut down underneath them deterministically."""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import replace

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from energy_rerank.candidates import CandidateSampler
from energy_rerank.energy import EnergyModel
from energy_rerank.policy.reference import ReferenceVLA
from energy_rerank.reranker import Reranker
from energy_rerank.scoring import TorchScorer
from energy_rerank.server.app import RerankServer
from energy_rerank.server.batcher import BatchConfig
from energy_rerank.server.config import ServerConfig
from energy_rerank.server.testing import TINY_CAMERA, TINY_LOWDIM, write_tiny_bundles
from energy_rerank_client import AsyncRerankClient, RetryPolicy

POLICY_SECONDS = 0.3


class SlowPolicy:
    """The tiny reference policy, POLICY_SECONDS slower per batch."""

    def __init__(self, inner: ReferenceVLA) -> None:
        self.inner, self.description, self.stats = inner, inner.description, inner.stats

    def propose(self, observations):
        time.sleep(POLICY_SECONDS)
        return self.inner.propose(observations)


@pytest.fixture(scope="module")
def reranker(tmp_path_factory):
    policy_dir, energy_dir = write_tiny_bundles(tmp_path_factory.mktemp("bundles"))
    policy = ReferenceVLA.load(policy_dir)
    return Reranker(
        SlowPolicy(policy),
        TorchScorer(EnergyModel.from_pretrained(energy_dir)),
        CandidateSampler.for_policy(policy),
    )


def observation() -> dict:
    return {
        "images": {TINY_CAMERA: np.zeros((32, 32, 3), np.uint8)},
        "lowdim": np.zeros(TINY_LOWDIM, np.float32),
    }


def test_inflight_complete_and_new_calls_unavailable(reranker):
    config = replace(ServerConfig(), address="127.0.0.1:0", metrics_port=None, batch=BatchConfig(max_batch=2))

    async def scenario():
        server = RerankServer(config, reranker)
        await server.start()
        no_retry = RetryPolicy(attempts=1)
        async with AsyncRerankClient(server.address, retry=no_retry, timeout=30) as client:
            health = health_pb2_grpc.HealthStub(client.channel)
            assert (
                await health.Check(health_pb2.HealthCheckRequest())
            ).status == health_pb2.HealthCheckResponse.SERVING
            # 4 calls at max_batch 2: one batch running, one queued when the drain starts
            inflight = [
                asyncio.create_task(client.select(**observation(), num_candidates=8, seed=i))
                for i in range(4)
            ]
            while server.servicer.batcher.depth < 2:
                await asyncio.sleep(0.005)
            drain = asyncio.create_task(server.drain(grace=10))
            await asyncio.sleep(0.05)
            # sent just after the signal, before any client could know: served
            inflight.append(asyncio.create_task(client.select(**observation(), num_candidates=8)))
            await asyncio.sleep(config.drain_accept_seconds)
            assert not drain.done()  # the first calls are still running
            with pytest.raises(grpc.RpcError) as late:
                await client.select(**observation(), num_candidates=8)
            done = await asyncio.gather(*inflight)
            await drain
        return late.value, done

    t0 = time.perf_counter()
    late, done = asyncio.run(scenario())
    assert late.code() == grpc.StatusCode.UNAVAILABLE and "draining" in late.details(), late
    assert len(done) == 5 and all(np.isfinite(r.chunk).all() and r.energies.shape == (8,) for r in done)
    assert time.perf_counter() - t0 < 5  # drained as soon as the work was done, not after the grace


def test_health_not_serving_while_draining(reranker):
    config = replace(ServerConfig(), address="127.0.0.1:0", metrics_port=None)

    async def scenario():
        server = RerankServer(config, reranker)
        await server.start()
        statuses = []
        async with grpc.aio.insecure_channel(server.address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            call = health.Watch(health_pb2.HealthCheckRequest())
            statuses.append((await call.read()).status)
            drain = asyncio.create_task(server.drain(grace=1))
            statuses.append((await call.read()).status)
            await drain
        return statuses

    serving, draining = asyncio.run(scenario())
    assert serving == health_pb2.HealthCheckResponse.SERVING
    assert draining == health_pb2.HealthCheckResponse.NOT_SERVING


def test_reflection_lists_the_services(reranker):
    config = replace(ServerConfig(), address="127.0.0.1:0", metrics_port=None)

    async def start():
        server = RerankServer(config, reranker)
        await server.start()
        return server

    loop = asyncio.new_event_loop()
    server = loop.run_until_complete(start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)  # the blocking client below
    thread.start()  # needs the server's loop running meanwhile
    try:
        with grpc.insecure_channel(server.address) as channel:
            services = ProtoReflectionDescriptorDatabase(channel).get_services()
        asyncio.run_coroutine_threadsafe(server.drain(grace=1), loop).result(30)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
    assert {"energy_rerank.v1.RerankService", "grpc.health.v1.Health"} <= set(services)
