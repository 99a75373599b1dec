"""Drain on SIGTERM, against the real server (`energy-rerank serve` in a subprocess, embedded
default): 16 clients, each on its own channel, send a call; SIGTERM follows 0-15 ms later, so
some calls are still on the wire, some received but not yet handed to a handler, some queued,
one running. Every one of them must end OK: gRPC's own graceful stop cancelled the ones it had
not yet handed to a handler (6 of 16 CANCELLED within 5 ms in one round of three).

CI runs DRAIN_ROUNDS = 3 rounds (a server start each, ~4 s); the acceptance run is 20:
`ENERGY_RERANK_DRAIN_ROUNDS=20 pytest tests/test_reliability_drain.py`.
"""

from __future__ import annotations

import asyncio
import collections
import os
import signal

import grpc
import numpy as np

from energy_rerank.server.testing import ServerProcess
from energy_rerank_client._proto import rerank_pb2 as pb
from energy_rerank_client._proto import rerank_pb2_grpc

DRAIN_ROUNDS = int(os.environ.get("ENERGY_RERANK_DRAIN_ROUNDS", "3"))
CLIENTS = 16
N = 1024  # candidates per call: a few ms of model time each, so calls queue behind each other


def request(info: pb.ModelInfo, seed: int) -> pb.SelectActionRequest:
    rng = np.random.default_rng(seed)
    obs = pb.Observation(
        lowdim=pb.Tensor(
            dtype="float32",
            shape=[info.lowdim_dim],
            data=rng.normal(size=info.lowdim_dim).astype(np.float32).tobytes(),
        )
    )
    return pb.SelectActionRequest(observation=obs, params=pb.SelectParams(num_candidates=N, seed=seed))


async def one_round(k: int) -> tuple[collections.Counter, int]:
    with ServerProcess(["--log-level", "WARNING", "--max-candidates", str(N)]) as srv:
        channels = [grpc.aio.insecure_channel(srv.address) for _ in range(CLIENTS)]
        try:
            stubs = [rerank_pb2_grpc.RerankServiceStub(c) for c in channels]
            infos = await asyncio.gather(
                *(s.GetModelInfo(pb.GetModelInfoRequest(), timeout=30) for s in stubs)
            )
            calls = [
                asyncio.ensure_future(s.SelectAction(request(infos[0], 16 * k + i), timeout=60))
                for i, s in enumerate(stubs)
            ]
            await asyncio.sleep(0.005 * (k % 4))  # 0-15 ms: on the wire, received, queued or running
            srv.proc.send_signal(signal.SIGTERM)
            codes: collections.Counter[str] = collections.Counter()
            for call in calls:
                try:
                    r = await call
                    assert np.isfinite(np.frombuffer(r.chunk.data, np.float32)).all()
                    codes["OK"] += 1
                except grpc.RpcError as e:
                    codes[f"{e.code().name}: {e.details()}"] += 1
        finally:
            await asyncio.gather(*(c.close() for c in channels))
        rc = await asyncio.to_thread(srv.proc.wait, 60)
        return codes, rc


def test_every_call_sent_before_sigterm_ends_ok():
    results = [asyncio.run(one_round(k)) for k in range(DRAIN_ROUNDS)]
    for k, (codes, rc) in enumerate(results):
        print(f"round {k}: {dict(codes)}, exit {rc}")
    assert all(codes == {"OK": CLIENTS} for codes, _ in results), [dict(c) for c, _ in results]
    assert all(rc == 0 for _, rc in results)  # drained and exited cleanly
