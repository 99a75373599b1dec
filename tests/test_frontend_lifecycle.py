"""The openpi and OFT front ends share the gRPC server's queue limit and its SIGTERM drain (real
server in a subprocess, loopback)."""

from __future__ import annotations

import json
import re
import signal
import threading
import time
import urllib.error
import urllib.request

import json_numpy
import numpy as np
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from energy_rerank.server.numpy_msgpack import packb, unpackb
from energy_rerank.server.testing import LIBERO_CAMERAS, ServerProcess, write_tiny_bundles

OPENPI_OBS = {
    "observation/image": np.zeros((64, 64, 3), np.uint8),
    "observation/wrist_image": np.zeros((64, 64, 3), np.uint8),
    "observation/state": np.zeros(8),
    "prompt": "put the bowl on the plate",
}
OFT_OBS = {"full_image": np.zeros((64, 64, 3), np.uint8), "wrist_image": np.zeros((64, 64, 3), np.uint8),
           "state": np.zeros(8), "instruction": "put the bowl on the plate"}  # fmt: skip


def start(tmp_path, *extra: str) -> ServerProcess:
    policy_dir, energy_dir = write_tiny_bundles(tmp_path / "bundles", cameras=LIBERO_CAMERAS, lowdim_dim=0, state_dim=8)
    srv = ServerProcess(["--policy", str(policy_dir), "--energy", str(energy_dir), "--openpi-address", "127.0.0.1:0",
                         "--oft-address", "127.0.0.1:0", *extra])  # fmt: skip
    srv.__enter__()
    srv.openpi_url = re.search(r"openpi protocol at (\S+)", srv.output).group(1)  # type: ignore[attr-defined]
    srv.oft_url = re.search(r"oft protocol at (\S+)", srv.output).group(1)  # type: ignore[attr-defined]
    return srv


def post(url: str, obs: dict) -> int:
    request = urllib.request.Request(url, data=json_numpy.dumps(obs).encode(), headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as r:
            assert len(json_numpy.loads(r.read())) == 8
            return r.status
    except urllib.error.HTTPError as e:
        assert json.loads(e.read())["code"] in ("RESOURCE_EXHAUSTED", "UNAVAILABLE")
        return e.code


def health(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def test_queue_limit_is_shared(tmp_path):
    srv = start(tmp_path, "--queue-limit", "1", "--max-batch", "1", "--log-level", "ERROR")
    try:
        # Alone, each front end is served: the refusals below come from the burst, not the protocol.
        with connect(srv.openpi_url, compression=None, max_size=None) as ws:
            ws.recv()
            ws.send(packb(OPENPI_OBS))
            assert isinstance(ws.recv(timeout=60), bytes)
        assert post(srv.oft_url, OFT_OBS) == 200
        # In a burst from both protocols, one queue slot refuses requests of each: the limit is shared.
        # (Which requests of the burst are served is a race, so only the refusals are asserted.)
        barrier = threading.Barrier(16)
        openpi: list[str] = []
        oft: list[int] = []

        def openpi_client() -> None:
            with connect(srv.openpi_url, compression=None, max_size=None) as ws:
                ws.recv()
                barrier.wait()
                for _ in range(4):
                    ws.send(packb({**OPENPI_OBS, "rerank/num_candidates": 256}))
                    reply = ws.recv(timeout=60)
                    if isinstance(reply, str):  # refused: the connection ends, as in openpi
                        openpi.append(reply.split(":", 1)[0])
                        return
                    openpi.append("ok")

        def oft_client() -> None:
            barrier.wait()
            for _ in range(4):
                oft.append(post(srv.oft_url, {**OFT_OBS, "rerank/num_candidates": 256}))

        threads = [threading.Thread(target=openpi_client) for _ in range(8)] + [
            threading.Thread(target=oft_client) for _ in range(8)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert "RESOURCE_EXHAUSTED" in openpi and set(openpi) <= {"ok", "RESOURCE_EXHAUSTED"}
        assert 429 in oft and set(oft) <= {200, 429}
        with urllib.request.urlopen(srv.metrics_url, timeout=10) as r:
            text = r.read().decode()
        for protocol in ("openpi", "oft"):
            assert re.search(rf'errors_total\{{code="RESOURCE_EXHAUSTED",protocol="{protocol}"\}} [1-9]', text)
    finally:
        srv.stop()


def test_sigterm_drains_both_front_ends(tmp_path):
    srv = start(tmp_path, "--drain-accept-seconds", "3", "--drain-seconds", "10")
    ws = connect(srv.openpi_url, compression=None, max_size=None)
    ws.recv()
    openpi_health = srv.openpi_url.replace("ws://", "http://") + "/healthz"
    oft_health = srv.oft_url.replace("/act", "/healthz")
    assert health(openpi_health) == 200 and health(oft_health) == 200
    ws.send(packb(OPENPI_OBS))
    srv.proc.send_signal(signal.SIGTERM)  # the request above reached the server before the signal
    answer = unpackb(ws.recv(timeout=30))
    assert answer["actions"].shape == (8, 7)  # served through the drain
    deadline = time.monotonic() + 10
    while health(oft_health) != 503 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert health(oft_health) == 503 and health(openpi_health) == 503  # balancers stop sending
    assert post(srv.oft_url, OFT_OBS) == 200  # still inside the accept window
    try:
        ws.recv(timeout=30)
        raise AssertionError("the connection should have been closed")
    except ConnectionClosed as e:
        assert e.rcvd is not None and e.rcvd.code == 1001  # going away, once the drain is over
    assert srv.proc.wait(30) == 0
    assert "draining" in srv.output and "stopped" in srv.output
