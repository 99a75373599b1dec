"""Image decompression bombs against the real server (`energy-rerank serve` in a subprocess).

A 4096 x 4096 PNG of one colour is 49 KB on the wire and 48 MB decoded; 20 fit in a 1 MB
request, 85 in the 4 MiB message limit. While such requests arrive, a second client polls
health and GetModelInfo every 100 ms: every poll must answer within 250 ms, and the server's
resident memory one second after the burst must be within 1.5x of before it.

Two policies, so the test is honest about where the cost would be: the embedded default reads
no camera, so none of the images may be decoded (the server's validation time shows it); a
two-camera policy reads one large and one small image per request (within the per-request
pixel budget; both large is over it and refused before decoding), so decoding really happens,
off the event loop, while the polls go on.
"""

from __future__ import annotations

import io
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image

from energy_rerank.server.testing import TINY_LOWDIM, ServerProcess, write_tiny_bundles
from energy_rerank_client._proto import rerank_pb2 as pb
from energy_rerank_client._proto import rerank_pb2_grpc

POLL_SECONDS = 0.1
POLL_LIMIT = 0.25  # every health / GetModelInfo poll answers within this
RSS_RATIO = 1.5  # resident memory 1 s after the burst, against before it
CAMERAS = ("agentview", "wrist")


def png(side: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (side, side)).save(buf, format="PNG")  # black: the smallest file
    return buf.getvalue()


@pytest.fixture(scope="module")
def bomb() -> bytes:
    data = png(4096)
    assert len(data) < 50_000  # 49 KB on the wire, 48 MB decoded
    return data


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


class Poller:
    """Health Check and GetModelInfo, alternately, every POLL_SECONDS on a channel of its own."""

    def __init__(self, address: str) -> None:
        self.channel = grpc.insecure_channel(address)
        self.health = health_pb2_grpc.HealthStub(self.channel)
        self.info = rerank_pb2_grpc.RerankServiceStub(self.channel)
        self.latencies: list[float] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        k = 0
        while not self._stop.is_set():
            t0 = time.perf_counter()
            try:
                if k % 2:
                    self.info.GetModelInfo(pb.GetModelInfoRequest(), timeout=5)
                else:
                    self.health.Check(health_pb2.HealthCheckRequest(), timeout=5)
            except grpc.RpcError as e:
                self.failures.append(f"{e.code().name}: {e.details()}")
            self.latencies.append(time.perf_counter() - t0)
            k += 1
            self._stop.wait(max(0.0, POLL_SECONDS - (time.perf_counter() - t0)))

    def __enter__(self) -> Poller:
        for _ in range(3):  # the channel is connected before anything is timed
            self.health.Check(health_pb2.HealthCheckRequest(), timeout=30)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)
        self.channel.close()


def request(images: dict[str, bytes]) -> pb.SelectActionRequest:
    obs = pb.Observation(lowdim=pb.Tensor(dtype="float32", shape=[TINY_LOWDIM], data=bytes(4 * TINY_LOWDIM)))
    for name, data in images.items():
        obs.images[name].CopyFrom(pb.Image(encoding=pb.Image.PNG, data=data))
    return pb.SelectActionRequest(observation=obs, params=pb.SelectParams(num_candidates=4, seed=0))


def extras(bomb: bytes, n: int) -> dict[str, bytes]:
    return {f"extra{i}": bomb for i in range(n)}


def settle_and_check(srv: ServerProcess, poller: Poller, before: float) -> float:
    time.sleep(1.0)
    after = rss_mib(srv.proc.pid)
    print(f"\npolls: {len(poller.latencies)}, slowest {max(poller.latencies) * 1e3:.0f} ms; "
          f"server RSS {before:.0f} MiB before, {after:.0f} MiB 1 s after the burst")  # fmt: skip
    assert not poller.failures, poller.failures
    assert len(poller.latencies) >= 5
    assert max(poller.latencies) < POLL_LIMIT, sorted(poller.latencies)[-5:]
    assert after < RSS_RATIO * before
    return after


def test_images_for_cameras_not_read_are_never_decoded(bomb):
    """The embedded default reads no camera: 20 and 85 bombs per request cost no decoding."""
    with ServerProcess(["--log-level", "WARNING"]) as srv, grpc.insecure_channel(srv.address) as channel:
        stub = rerank_pb2_grpc.RerankServiceStub(channel)
        stub.SelectAction(request({}), timeout=60)  # warm
        before = rss_mib(srv.proc.pid)
        with Poller(srv.address) as poller:
            for n in (20, 85, 20, 85):
                r = stub.SelectAction(request(extras(bomb, n)), timeout=60)
                # Decoding one of these takes ~0.3 s; not even their headers are read.
                assert r.timing.validation_seconds < 0.05, (n, r.timing.validation_seconds)
            settle_and_check(srv, poller, before)


def test_a_camera_policy_decodes_within_its_budget_off_the_event_loop(bomb, tmp_path):
    policy_dir, energy_dir = write_tiny_bundles(tmp_path, cameras=CAMERAS)
    big, small = png(4000), png(32)  # 16 M + 1 K pixels: within the 16.8 M budget
    args = ["--policy", str(policy_dir), "--energy", str(energy_dir), "--log-level", "WARNING"]
    with ServerProcess(args) as srv, grpc.insecure_channel(srv.address) as channel:
        stub = rerank_pb2_grpc.RerankServiceStub(channel)
        stub.SelectAction(request({"agentview": small, "wrist": small}), timeout=60)  # warm
        before = rss_mib(srv.proc.pid)
        with Poller(srv.address) as poller:
            t0 = time.perf_counter()
            with pytest.raises(grpc.RpcError) as over:  # two bombs it reads: refused from the headers
                stub.SelectAction(request({"agentview": bomb, "wrist": bomb}), timeout=60)
            refused_in = time.perf_counter() - t0
            served = []
            for n in (18, 83):  # the request's other cameras are not read: 20 and 85 images in all
                r = stub.SelectAction(
                    request({"agentview": big, "wrist": small, **extras(bomb, n)}), timeout=60
                )
                served.append(r.timing.validation_seconds)
            with ThreadPoolExecutor(4) as pool:  # four at once: 64 M pixels decoded together, within 67 M
                burst = list(pool.map(lambda _: stub.SelectAction(
                    request({"agentview": big, "wrist": small, **extras(bomb, 18)}), timeout=60), range(4)))  # fmt: skip
            settle_and_check(srv, poller, before)

    assert over.value.code() == grpc.StatusCode.INVALID_ARGUMENT, over.value
    assert "exceed the per-request budget" in over.value.details(), over.value.details()
    assert refused_in < 0.2, refused_in
    assert min(served) > 0.05, served  # the big image really was decoded (and the poll went on meanwhile)
    assert all(np.isfinite(np.frombuffer(r.chunk.data, np.float32)).all() for r in burst)
