"""Load: 64 concurrent clients x 200 requests against the real server (`energy-rerank serve` in a
subprocess on a loopback port, tiny bundles, small N). Bounded in count and time.

Every request must be accounted for: answered with a chunk or with a deliberate status code;
"lost" (no answer, or an exception that is not a gRPC status) must be zero. Throughput, p50/p99
latency and the count of every status are printed; the server's own request counter must agree
with the client's count of answers.
"""

from __future__ import annotations

import asyncio
import collections
import time
import urllib.request

import grpc
import numpy as np
import pytest

from energy_rerank.server.testing import TINY_CAMERA, TINY_LOWDIM, ServerProcess, write_tiny_bundles
from energy_rerank_client import AsyncRerankClient, RetryPolicy

CLIENTS = 64
REQUESTS = 200  # per client
N = 4  # candidates per request: the load is on the service, not the model
BUDGET_SECONDS = 240  # the whole run must finish within this; the test fails rather than hangs


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    policy_dir, energy_dir = write_tiny_bundles(tmp_path_factory.mktemp("bundles"))
    args = ["--policy", str(policy_dir), "--energy", str(energy_dir), "--max-batch", "64",
            "--queue-limit", "1024", "--log-level", "WARNING"]  # fmt: skip
    with ServerProcess(args) as srv:
        yield srv


def observation(seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "images": {TINY_CAMERA: rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)},
        "lowdim": rng.normal(size=TINY_LOWDIM).astype(np.float32),
    }


async def one_client(address: str, k: int, statuses: collections.Counter, latencies: list[float]) -> int:
    """REQUESTS sequential calls; returns how many got an answer (a chunk or a status)."""
    obs = observation(k)
    answered = 0
    # No retries: every status the server gives is counted as it is.
    async with AsyncRerankClient(address, timeout=60, retry=RetryPolicy(attempts=1)) as client:
        for i in range(REQUESTS):
            t0 = time.perf_counter()
            try:
                r = await client.select(**obs, num_candidates=N, seed=i)
                assert r.chunk.shape[0] > 0 and np.isfinite(r.chunk).all()
                statuses["OK"] += 1
            except grpc.RpcError as e:
                statuses[e.code().name] += 1
            latencies.append(time.perf_counter() - t0)
            answered += 1
    return answered


def served_requests(metrics_url: str) -> float:
    with urllib.request.urlopen(metrics_url, timeout=10) as r:
        for line in r.read().decode().splitlines():
            if line.startswith('energy_rerank_requests_total{method="SelectAction",protocol="grpc"}'):
                return float(line.split()[-1])
    return 0.0


def test_64_clients_x_200_requests_none_lost(server):
    statuses: collections.Counter[str] = collections.Counter()
    latencies: list[float] = []
    before = served_requests(server.metrics_url)

    async def run() -> list:
        tasks = [one_client(server.address, k, statuses, latencies) for k in range(CLIENTS)]
        return await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), BUDGET_SECONDS)

    t0 = time.perf_counter()
    results = asyncio.run(run())
    wall = time.perf_counter() - t0
    total = CLIENTS * REQUESTS
    crashed = [r for r in results if isinstance(r, BaseException)]
    answered = sum(r for r in results if isinstance(r, int))
    lost = total - answered
    lat = np.sort(np.asarray(latencies)) * 1e3
    served = served_requests(server.metrics_url) - before
    print(
        f"\nload: {CLIENTS} clients x {REQUESTS} requests = {total} in {wall:.1f} s "
        f"({total / wall:.0f} req/s); latency p50 {np.percentile(lat, 50):.1f} ms, "
        f"p99 {np.percentile(lat, 99):.1f} ms, max {lat[-1]:.1f} ms; statuses {dict(statuses)}; "
        f"lost {lost}; server counted {served:.0f} answered"
    )
    assert not crashed, crashed[:3]
    assert lost == 0 and sum(statuses.values()) == total
    assert statuses["OK"] == total, f"plain load must not produce errors: {dict(statuses)}"
    assert served == statuses["OK"]  # the server saw exactly the requests the clients counted
    assert server.proc.poll() is None, "the server died under load"
