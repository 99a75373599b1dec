"""Hostile input on the openpi and OFT front ends of the real server (subprocess, loopback):
random bytes, random msgpack/JSON, arrays with forbidden dtypes, huge declared shapes, truncated
and oversized frames, non-finite and out-of-range values. Every one must get the documented error
(openpi: a text frame naming a client-error status, then close 1011, or close 1009 for a frame
over --max-message-mb; OFT: 400 or 413 with a JSON error), never INTERNAL, while the server
keeps answering good requests and its memory stays bounded.
"""

from __future__ import annotations

import base64
import collections
import http.client
import json
import re
from typing import Any

import msgpack
import numpy as np
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from energy_rerank.server.numpy_msgpack import packb, unpackb
from energy_rerank.server.testing import LIBERO_CAMERAS, ServerProcess, write_tiny_bundles

MAX_MB = 1
N_OPENPI, N_OFT = 600, 600  # hostile inputs per front end (1200 in all)
CLIENT_ERRORS = {"INVALID_ARGUMENT", "RESOURCE_EXHAUSTED"}
RSS_GROWTH_MB = 100  # the server may grow this much over all the hostile traffic, no more


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    policy_dir, energy_dir = write_tiny_bundles(root / "bundles", cameras=LIBERO_CAMERAS, lowdim_dim=0, state_dim=8)
    args = ["--policy", str(policy_dir), "--energy", str(energy_dir), "--openpi-address", "127.0.0.1:0",
            "--oft-address", "127.0.0.1:0", "--max-message-mb", str(MAX_MB), "--log-level", "ERROR"]  # fmt: skip
    with ServerProcess(args) as srv:
        srv.openpi_url = re.search(r"openpi protocol at (\S+)", srv.output).group(1)  # type: ignore[attr-defined]
        srv.oft_port = int(re.search(r"oft protocol at http://127.0.0.1:(\d+)/act", srv.output).group(1))  # type: ignore[attr-defined]
        yield srv


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


def good_observation(rng: np.random.Generator) -> dict[str, Any]:
    return {
        "observation/image": rng.integers(0, 256, (64, 64, 3), dtype=np.uint8),
        "observation/wrist_image": rng.integers(0, 256, (64, 64, 3), dtype=np.uint8),
        "observation/state": rng.normal(size=8),
        "prompt": "put the bowl on the plate",
        "rerank/num_candidates": 8,
    }


def random_value(rng: np.random.Generator, depth: int = 0) -> Any:
    kind = int(rng.integers(0, 7 if depth < 4 else 4))
    if kind == 0:
        return int(rng.integers(-(2**62), 2**62))
    if kind == 1:
        return float(rng.choice([np.nan, np.inf, -np.inf, 1e300, rng.normal()]))
    if kind == 2:
        return rng.bytes(int(rng.integers(0, 64)))
    if kind == 3:
        return "".join(chr(int(c)) for c in rng.integers(32, 0x2FF, int(rng.integers(0, 16))))
    if kind == 4:
        return [random_value(rng, depth + 1) for _ in range(int(rng.integers(0, 5)))]
    keys = ["observation/image", "observation/state", "prompt", "rerank/seed", "rerank/num_candidates", "x"]
    return {str(rng.choice(keys)): random_value(rng, depth + 1) for _ in range(int(rng.integers(0, 5)))}


def bad_array(rng: np.random.Generator) -> dict[bytes, Any]:
    """A msgpack-numpy array map that must be refused: bad dtype, shape or byte count."""
    dtype = str(rng.choice(["|O", "<c8", "|V8", ">f4", "<U4", "float32", "<f4", "|u1", 7]))
    shape = [[2**40, 2**40], [10**9, 3], [-1, 3], [3.5], "abc", [1] * 40, [64, 64, 3]][int(rng.integers(0, 7))]
    return {b"__ndarray__": True, b"data": rng.bytes(int(rng.integers(0, 100))), b"dtype": dtype, b"shape": shape}


def hostile_openpi_frame(i: int, rng: np.random.Generator) -> bytes | str:
    good = good_observation(rng)
    kind = i % 10
    if kind == 0:
        return rng.bytes(int(rng.integers(0, 2000)))
    if kind == 1:
        return msgpack.packb(random_value(rng))
    if kind == 2:
        return msgpack.packb({**{k: v for k, v in good.items() if not isinstance(v, np.ndarray)},
                              "observation/image": bad_array(rng), "observation/state": bad_array(rng)})  # fmt: skip
    if kind == 3:
        frame = packb(good)
        return frame[: int(rng.integers(1, len(frame)))]  # truncated
    if kind == 4:
        good["observation/state"] = np.array([np.nan, np.inf, -np.inf, 1e300, 1e39, 0, 0, 0])[rng.permutation(8)]
        return packb(good)
    if kind == 5:
        good["observation/image"] = rng.normal(size=(64, 64, 3))  # float image
        return packb(good)
    if kind == 6:
        good[str(rng.choice(["observation/image", "observation/wrist_image"]))] = rng.integers(0, 256, (5,), np.uint8)
        return packb(good)
    if kind == 7:
        good[str(rng.choice(["rerank/num_candidates", "rerank/seed", "rerank/switch_margin"]))] = random_value(rng)
        good["rerank/switch_margin"] = -1.0
        return packb(good)
    if kind == 8:
        return "a text frame" * int(rng.integers(1, 50))
    return b"\x00" * (MAX_MB * 2**20 + int(rng.integers(1, 4096)))  # oversized


def hostile_oft_body(i: int, rng: np.random.Generator) -> bytes:
    arr = {"__numpy__": base64.b64encode(rng.bytes(12)).decode(), "dtype": "<f4", "shape": [3]}
    kind = i % 8
    if kind == 0:
        return rng.bytes(int(rng.integers(0, 2000)))
    if kind == 1:
        return json.dumps(random_value(rng), default=lambda b: base64.b64encode(b).decode()).encode()
    if kind == 2:
        bad = dict(arr, dtype=str(rng.choice(["|O", "<c8", "|V8", ">f4", "x"])), shape=[2**40, 2**40])
        return json.dumps({"full_image": bad, "wrist_image": arr, "state": arr, "instruction": "x"}).encode()
    if kind == 3:
        return json.dumps({"full_image": dict(arr, __numpy__="!!not base64!!"), "instruction": "x"}).encode()
    if kind == 4:
        return b"[" * 100_000 + b"]" * 100_000  # nesting
    if kind == 5:
        state = ["NaN", "Infinity", 1e300, 1e39][int(rng.integers(0, 4))]
        image = {"__numpy__": base64.b64encode(bytes(48)).decode(), "dtype": "|u1", "shape": [4, 4, 3]}
        return json.dumps({"full_image": image, "wrist_image": image, "state": [state] * 8}).encode()
    if kind == 6:
        return json.dumps({"encoded": json.dumps({"encoded": "{"})}).encode()
    return b" " * (MAX_MB * 2**20 + 1)  # oversized


def openpi_outcome(url: str, frame: bytes | str) -> str:
    with connect(url, compression=None, max_size=None, open_timeout=30) as ws:
        ws.recv()  # metadata
        try:
            ws.send(frame)
            reply = ws.recv(timeout=60)
        except ConnectionClosed as e:
            return f"closed {e.rcvd.code if e.rcvd else None}"
        assert isinstance(reply, str), "a hostile frame was answered as a good one"
        code = reply.split(":", 1)[0]
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=30)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1011
        return code


def good_openpi_answer(url: str, rng: np.random.Generator) -> None:
    with connect(url, compression=None, max_size=None) as ws:
        ws.recv()
        ws.send(packb(good_observation(rng)))
        r = unpackb(ws.recv(timeout=60))
    assert r["actions"].shape == (8, 7) and np.isfinite(r["actions"]).all()


def test_hostile_frames_get_documented_errors_and_server_keeps_serving(server):
    rng = np.random.default_rng(0)
    good_openpi_answer(server.openpi_url, rng)
    baseline = rss_mb(server.proc.pid)
    outcomes: collections.Counter[str] = collections.Counter()
    for i in range(N_OPENPI):
        outcomes[openpi_outcome(server.openpi_url, hostile_openpi_frame(i, rng))] += 1
        if i % 100 == 99:
            good_openpi_answer(server.openpi_url, rng)
    assert set(outcomes) <= CLIENT_ERRORS | {"closed 1009"}, outcomes
    assert outcomes["closed 1009"] == N_OPENPI // 10 and sum(outcomes.values()) == N_OPENPI

    statuses: collections.Counter[int] = collections.Counter()
    conn = http.client.HTTPConnection("127.0.0.1", server.oft_port, timeout=60)
    for i in range(N_OFT):
        conn.request("POST", "/act", body=hostile_oft_body(i, rng), headers={"Content-Type": "application/json"})
        r = conn.getresponse()
        body = r.read()
        statuses[r.status] += 1
        assert json.loads(body)["code"] in CLIENT_ERRORS, body[:300]
        if r.getheader("Connection", "").lower() == "close":
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", server.oft_port, timeout=60)
    conn.close()
    assert set(statuses) <= {400, 413} and statuses[413] == N_OFT // 8, statuses

    good_openpi_answer(server.openpi_url, rng)
    growth = rss_mb(server.proc.pid) - baseline
    print(f"openpi outcomes {dict(outcomes)}, OFT statuses {dict(statuses)}, server RSS growth {growth:.1f} MB")
    assert growth < RSS_GROWTH_MB
    assert server.proc.poll() is None
