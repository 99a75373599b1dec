"""Client tests against a small in-process fake server (numpy + grpcio only: no torch needed).

The fake implements the real generated service with deterministic answers, so these tests
check the client's own job: encoding, decoding, deadlines, retries, auth metadata, the CLI.
The real server is exercised by the main project's tests/test_server_*.py.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from concurrent import futures

import grpc
import numpy as np
import pytest

from energy_rerank_client import AsyncRerankClient, RerankClient, RetryPolicy
from energy_rerank_client._proto import rerank_pb2 as pb
from energy_rerank_client._proto import rerank_pb2_grpc
from energy_rerank_client.cli import main as cli_main
from energy_rerank_client.tensors import from_tensor, to_image, to_tensor

H, A = 4, 3


class FakeService(rerank_pb2_grpc.RerankServiceServicer):
    """chunk[h, a] = state[a] + h; energies = arange(N)[::-1]; optional failures and delay."""

    def __init__(self) -> None:
        self.calls = 0
        self.fail_next: list[grpc.StatusCode] = []
        self.delay = 0.0
        self.metadata: list[dict] = []
        self.lock = threading.Lock()

    def _enter(self, context: grpc.ServicerContext) -> None:
        with self.lock:
            self.calls += 1
            self.metadata.append(dict(context.invocation_metadata()))
            code = self.fail_next.pop(0) if self.fail_next else None
        if code is not None:
            context.abort(code, f"injected {code.name}")
        time.sleep(self.delay)

    def SelectAction(self, request, context):
        self._enter(context)
        state = from_tensor(request.observation.state)
        n = request.params.num_candidates or 8
        chunk = (state[None, :] + np.arange(H, dtype=np.float32)[:, None]).astype(np.float32)
        energies = np.arange(n, dtype=np.float32)[::-1].copy()
        return pb.SelectActionResponse(
            chunk=to_tensor(chunk), index=int(energies.argmin()), energies=to_tensor(energies),
            model_version="fake", timing=pb.Timing(queue_seconds=0.001, total_seconds=0.002), batch_size=1,
        )  # fmt: skip

    def ScoreCandidates(self, request, context):
        self._enter(context)
        cands = from_tensor(request.candidates)  # [B, N, H, A]
        energies = np.abs(cands).sum(axis=(2, 3)).astype(np.float32)
        return pb.ScoreCandidatesResponse(energies=to_tensor(energies), argmin=energies.argmin(1).tolist())

    def GetModelInfo(self, request, context):
        self._enter(context)
        return pb.ModelInfo(model_version="fake", chunk_len=H, action_dim=A, action_low=[-1] * A,
                            action_high=[1] * A, cameras=["front"], image_height=8, image_width=8, state_dim=A)  # fmt: skip


@pytest.fixture(scope="module")
def server():
    svc = FakeService()
    srv = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    rerank_pb2_grpc.add_RerankServiceServicer_to_server(svc, srv)
    port = srv.add_insecure_port("127.0.0.1:0")
    srv.start()
    yield svc, f"127.0.0.1:{port}"
    srv.stop(None)


@pytest.fixture
def fake(server):
    svc, target = server
    svc.calls, svc.fail_next, svc.delay, svc.metadata = 0, [], 0.0, []
    return svc, target


FAST_RETRY = RetryPolicy(attempts=4, initial_backoff=0.01, max_backoff=0.05)


@pytest.mark.parametrize("dtype", ["float32", "float16", "float64", "int32", "int64", "uint8", "bool"])
def test_tensor_round_trip(dtype):
    a = (np.arange(24).reshape(2, 3, 4) % 3).astype(dtype)
    b = from_tensor(to_tensor(a))
    assert b.dtype == a.dtype and b.shape == a.shape and np.array_equal(a, b)
    b[0, 0, 0] = 1  # decoded arrays are writable


def test_images_by_kind():
    raw = to_image(np.zeros((5, 7, 3), np.uint8))
    assert (raw.encoding, raw.height, raw.width, len(raw.data)) == (pb.Image.RAW, 5, 7, 105)
    assert to_image(b"\x89PNG\r\n\x1a\n....").encoding == pb.Image.PNG
    assert to_image(b"\xff\xd8\xff\xe0....").encoding == pb.Image.JPEG
    with pytest.raises(ValueError, match="neither PNG nor JPEG"):
        to_image(b"GIF89a")
    with pytest.raises(ValueError, match=r"uint8 \[h, w, 3\]"):
        to_image(np.zeros((5, 7), np.float32))


def test_select_round_trip_and_token(fake):
    svc, target = fake
    state = np.array([0.5, -1.0, 2.0], np.float32)
    with RerankClient(target, token="s3cret") as c:
        r = c.select({"front": np.zeros((8, 8, 3), np.uint8)}, state, num_candidates=5, seed=3)
    assert r.chunk.shape == (H, A) and r.chunk.dtype == np.float32
    np.testing.assert_array_equal(r.chunk[2], state + 2)
    assert r.energies.shape == (5,) and r.index == 4 and r.candidates is None
    assert r.timing == {"queue": 0.001, "total": 0.002}
    assert svc.metadata[-1]["authorization"] == "Bearer s3cret"


def test_retries_on_unavailable_then_succeeds(fake):
    svc, target = fake
    svc.fail_next = [grpc.StatusCode.UNAVAILABLE] * 2
    with RerankClient(target, retry=FAST_RETRY) as c:
        assert c.info().chunk_len == H
    assert svc.calls == 3


def test_retries_a_call_the_server_cancelled(fake):
    # What a draining server sends for calls it had not yet started (grpc/grpc#41785).
    svc, target = fake
    svc.fail_next = [grpc.StatusCode.CANCELLED]
    with RerankClient(target, retry=FAST_RETRY) as c:
        assert c.info().chunk_len == H
    assert svc.calls == 2


def test_gives_up_after_attempts(fake):
    svc, target = fake
    svc.fail_next = [grpc.StatusCode.UNAVAILABLE] * 10
    with RerankClient(target, retry=FAST_RETRY) as c, pytest.raises(grpc.RpcError) as e:
        c.info()
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE and svc.calls == FAST_RETRY.attempts


def test_no_retry_on_invalid_argument(fake):
    svc, target = fake
    svc.fail_next = [grpc.StatusCode.INVALID_ARGUMENT]
    with RerankClient(target, retry=FAST_RETRY) as c, pytest.raises(grpc.RpcError) as e:
        c.info()
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and svc.calls == 1


def test_deadline(fake):
    svc, target = fake
    svc.delay = 0.5
    t0 = time.monotonic()
    with RerankClient(target) as c, pytest.raises(grpc.RpcError) as e:
        c.info(timeout=0.1)
    assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED and time.monotonic() - t0 < 0.45


def test_async_client_select_score_and_retry(fake):
    svc, target = fake
    svc.fail_next = [grpc.StatusCode.UNAVAILABLE]
    cands = np.random.default_rng(0).normal(size=(2, 6, H, A)).astype(np.float32)

    async def go():
        async with AsyncRerankClient(target, retry=FAST_RETRY) as c:
            r = await c.select(state=np.zeros(A, np.float32), num_candidates=3)
            s = await c.score(np.zeros((2, 5, 16), np.float32), cands, valid=np.ones((2, 5), bool))
            return r, s

    r, s = asyncio.run(go())
    assert r.chunk.shape == (H, A) and r.energies.shape == (3,)
    np.testing.assert_allclose(s.energies, np.abs(cands).sum(axis=(2, 3)), rtol=1e-6)
    np.testing.assert_array_equal(s.argmin, s.energies.argmin(1))
    assert svc.calls == 3  # one retried select + one score


def test_cli_info_and_select(fake, capsys):
    _, target = fake
    assert cli_main(["--target", target, "info"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["chunk_len"] == H and info["cameras"] == ["front"]
    assert cli_main(["--target", target, "select", "--blank", "-n", "4"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert np.asarray(out["chunk"]).shape == (H, A) and len(out["energies"]) == 4


def test_cli_reports_errors(fake, capsys):
    svc, target = fake
    svc.fail_next = [grpc.StatusCode.INVALID_ARGUMENT]
    assert cli_main(["--target", target, "info"]) == 1
    assert "INVALID_ARGUMENT" in capsys.readouterr().err


def test_replicas_target_and_health_checked_round_robin():
    from energy_rerank_client import replicas

    target, options = replicas(["127.0.0.1:5001", "127.0.0.1:5002"])
    assert target == "ipv4:127.0.0.1:5001,127.0.0.1:5002"
    config = json.loads(dict(options)["grpc.service_config"])
    assert config["loadBalancingConfig"] == [{"round_robin": {}}]
    assert config["healthCheckConfig"]["serviceName"] == "energy_rerank.v1.RerankService"
    assert replicas(["[::1]:5001"])[0] == "ipv6:[::1]:5001"
    assert replicas(["dns:///rerank.robots:50051"])[0] == "dns:///rerank.robots:50051"
    for bad in (["rerank-0:50051"], ["127.0.0.1:1", "[::1]:2"]):
        with pytest.raises(ValueError):
            replicas(bad)
