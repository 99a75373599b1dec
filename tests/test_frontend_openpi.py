"""The openpi websocket front end against the real server (`energy-rerank serve --openpi-address`)
in a subprocess, over loopback.

Two kinds of client:
- the real `openpi-client` 0.1.2 (`WebsocketClientPolicy` wrapped in `ActionChunkBroker`,
  unmodified), installed from the package index into `.venv-openpi/` (it pins numpy < 2, and
  imports typing_extensions without declaring it), run in a subprocess;
- the websockets library with the project's encoder, against frames recorded from openpi's own
  `msgpack_numpy` (tests/data/openpi_frames, written by scripts/record_openpi_frames.py): the
  encoder must reproduce openpi's bytes exactly, so openpi decodes what the server sends.
"""

from __future__ import annotations

import importlib.util
import json
import math
import re
import shutil
import ssl
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from energy_rerank.server.numpy_msgpack import packb, unpackb
from energy_rerank.server.testing import ServerProcess, write_tiny_bundles

ROOT = Path(__file__).resolve().parents[1]
FRAMES = ROOT / "tests" / "data" / "openpi_frames"
OPENPI_VENV = ROOT / ".venv-openpi"  # gitignored; made on first use, reused afterwards
OPENPI_PACKAGES = ["openpi-client==0.1.2", "typing_extensions"]
TOKEN = "openpi-token-51c2"
# the tiny test policy reads one camera and a 25-D low-dim vector; openpi's LIBERO client sends
# its vector as observation/state, so the key map points lowdim there
KEYS = '{"lowdim": "observation/state"}'


def _recorder() -> Any:
    spec = importlib.util.spec_from_file_location("record_openpi_frames", ROOT / "scripts" / "record_openpi_frames.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SAMPLES = _recorder().samples()


def openpi_python() -> Path:
    """The interpreter of a venv with the real openpi-client (about 10 s to make, once)."""
    python = OPENPI_VENV / "bin" / "python"
    check = [str(python), "-c", "import openpi_client.websocket_client_policy, openpi_client.action_chunk_broker"]
    if python.exists() and subprocess.run(check, capture_output=True).returncode == 0:
        return python
    shutil.rmtree(OPENPI_VENV, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(OPENPI_VENV)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", *OPENPI_PACKAGES], check=True, timeout=300)
    subprocess.run(check, check=True)
    return python


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("openpi")
    policy_dir, energy_dir = write_tiny_bundles(root / "bundles")
    args = ["--policy", str(policy_dir), "--energy", str(energy_dir), "--openpi-address", "127.0.0.1:0",
            "--openpi-keys", KEYS, "--log-level", "WARNING"]  # fmt: skip
    with ServerProcess(args, env={"ENERGY_RERANK_TOKEN": TOKEN}) as srv:
        srv.openpi_url = re.search(r"openpi protocol at (\S+)", srv.output).group(1)  # type: ignore[attr-defined]
        yield srv


def same(a: Any, b: Any) -> bool:
    """Deep equality of decoded frames (arrays by dtype, shape and value; NaN-free)."""
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and a.dtype == b.dtype and np.array_equal(a, b)
    if isinstance(a, np.generic) or isinstance(b, np.generic):
        return type(a) is type(b) and a == b
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(map(same, a, b))
    return type(a) is type(b) and a == b


# ------------------------------------------------------------------ the real openpi client
CLIENT = r"""
import json, sys
import numpy as np
import websockets
from openpi_client import action_chunk_broker, websocket_client_policy

url, token = sys.argv[1], sys.argv[2]
report = {}
policy = websocket_client_policy.WebsocketClientPolicy(host=url, api_key=token)
meta = policy.get_server_metadata()
report["metadata"] = {k: meta[k] for k in ("protocol", "chunk_len", "action_dim", "cameras", "keys")}
rng = np.random.default_rng(0)
obs = {  # openpi's LIBERO example layout: 224 x 224 images, float64 state, prompt
    "observation/image": rng.integers(0, 256, (224, 224, 3), dtype=np.uint8),
    "observation/wrist_image": rng.integers(0, 256, (224, 224, 3), dtype=np.uint8),
    "observation/state": rng.normal(size=25),
    "prompt": "pick up the alphabet soup and place it in the basket",
    "rerank/num_candidates": 16,
    "rerank/seed": 3,
}
whole = policy.infer(obs)
h = meta["chunk_len"]
report["actions"] = [list(whole["actions"].shape), str(whole["actions"].dtype)]
report["types"] = {k: type(v).__name__ for k, v in whole.items()}
report["energies"] = len(whole["energies"])
report["chosen_index"] = whole["chosen_index"]
report["infer_ms"] = whole["server_timing"]["infer_ms"]
broker = action_chunk_broker.ActionChunkBroker(policy, action_horizon=h)
steps = [broker.infer(obs) for _ in range(2 * h)]
report["step_shapes"] = sorted({str(s["actions"].shape) for s in steps})
report["steps_are_the_chunk"] = all(np.array_equal(s["actions"], whole["actions"][i % h]) for i, s in enumerate(steps))
report["step_energies"] = sorted({len(s["energies"]) for s in steps})
bad = dict(obs, **{"observation/state": np.zeros(3)})
try:
    policy.infer(bad)
except RuntimeError as e:
    report["error"] = str(e)
try:
    policy._ws.recv()
except websockets.exceptions.ConnectionClosed as e:
    report["close_code"] = e.rcvd.code
for name, key in (("wrong_token", "not-the-token"), ("no_token", None)):
    try:
        websocket_client_policy.WebsocketClientPolicy(host=url, api_key=key)
        report[name] = "connected"
    except Exception as e:
        report[name] = f"{type(e).__name__}: {e}"
print(json.dumps(report))
"""


def test_unmodified_openpi_client_gets_chunks(server, tmp_path):
    script = tmp_path / "client.py"
    script.write_text(CLIENT)
    out = subprocess.run([str(openpi_python()), str(script), server.openpi_url, TOKEN],
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["metadata"]["protocol"] == "openpi" and r["metadata"]["cameras"] == ["agentview"]
    assert r["metadata"]["keys"]["lowdim"] == "observation/state"
    h, a = r["metadata"]["chunk_len"], r["metadata"]["action_dim"]
    assert r["actions"] == [[h, a], "float32"]
    # diagnostics are plain values, so the broker hands them on whole at every step
    assert r["types"]["energies"] == "list" and r["types"]["chosen_index"] == "int"
    assert r["types"]["fallback"] == "bool" and r["types"]["server_timing"] == "dict"
    assert r["energies"] == 16 and 0 <= r["chosen_index"] < 16 and r["infer_ms"] > 0
    assert r["step_shapes"] == [f"({a},)"] and r["steps_are_the_chunk"] and r["step_energies"] == [16]
    assert r["error"].startswith("Error in inference server:\nINVALID_ARGUMENT: observation/state: shape [3]")
    assert r["close_code"] == 1011
    assert "401" in r["wrong_token"] and "401" in r["no_token"]


# ------------------------------------------------------------------ recorded openpi frames
@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_encoder_reproduces_openpi_bytes(name):
    recorded = (FRAMES / f"{name}.msgpack").read_bytes()
    assert packb(SAMPLES[name]) == recorded  # openpi decodes what the server sends
    assert same(unpackb(recorded), SAMPLES[name])  # and the server decodes what openpi sends


def open_ws(server, token: str | None = TOKEN):  # type: ignore[no-untyped-def]
    headers = {"Authorization": f"Api-Key {token}"} if token else None
    return connect(server.openpi_url, compression=None, max_size=None, additional_headers=headers)


def test_recorded_observation_frame_answered(server):
    with open_ws(server) as ws:
        meta = unpackb(ws.recv())
        assert meta["server"] == "energy-rerank" and meta["chunk_len"] == 8 and meta["action_dim"] == 7
        assert meta["default_candidates"] == 64 and math.isfinite(meta["max_candidates"])
        frame = (FRAMES / "observation.msgpack").read_bytes()
        answers = []
        for _ in range(2):
            ws.send(frame)
            answers.append(unpackb(ws.recv()))
    r = answers[0]
    assert r["actions"].shape == (8, 7) and r["actions"].dtype == np.float32 and np.isfinite(r["actions"]).all()
    low, high = np.asarray(meta["action_low"]), np.asarray(meta["action_high"])
    assert (r["actions"] >= low - 1e-6).all() and (r["actions"] <= high + 1e-6).all()
    assert len(r["energies"]) == 16 and r["chosen_index"] == int(np.argmin(r["energies"]))  # margin 0 sent
    assert r["model_version"] == meta["model_version"] and not r["fallback"]
    assert {"infer_ms", "validation_ms", "queue_ms", "score_ms", "total_ms"} <= set(r["server_timing"])
    assert "prev_total_ms" in answers[1]["server_timing"]
    assert np.array_equal(answers[1]["actions"], r["actions"])  # rerank/seed fixes the candidates


def test_control_frames_acknowledged(server):
    with open_ws(server) as ws:
        ws.recv()
        ws.send(packb({"__ctrl__": "episode_start", "__experiment__": "x", "__task__": "", "__episode_id__": 0}))
        assert unpackb(ws.recv()) == {"__ack__": "episode_start"}


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        ("a text frame", "INVALID_ARGUMENT: frame: expected a binary msgpack frame"),
        (b"\xc1", "INVALID_ARGUMENT: frame: not a msgpack frame"),
        (packb([1, 2]), "INVALID_ARGUMENT: observation: must be a map"),
        (packb({"prompt": "no image"}), "INVALID_ARGUMENT: observation/image: required"),
        (packb({**SAMPLES["observation"], "observation/state": np.full(25, np.nan)}),
         "INVALID_ARGUMENT: observation/state: contains NaN or Inf"),
        (packb({**SAMPLES["observation"], "observation/image": np.zeros((4, 4), np.uint8)}),
         "INVALID_ARGUMENT: observation/image: image of shape"),
        (packb({**SAMPLES["observation"], "rerank/num_candidates": 0}),
         "INVALID_ARGUMENT: rerank/num_candidates: 0 must be an integer in [1,"),
        (packb({**SAMPLES["observation"], "rerank/num_candidates": 10**6}),
         "INVALID_ARGUMENT: rerank/num_candidates: 1000000 is outside [1, 1024]"),
    ],
)  # fmt: skip
def test_bad_frame_gets_text_frame_and_1011(server, frame, message):
    with open_ws(server) as ws:
        ws.recv()
        ws.send(frame)
        error = ws.recv()
        assert isinstance(error, str) and error.startswith(message), error
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1011


def test_token_required_but_not_for_health(server):
    for token in (None, "wrong"):
        with pytest.raises(InvalidStatus) as refused:
            open_ws(server, token)
        assert refused.value.response.status_code == 401
    bearer = connect(server.openpi_url, additional_headers={"Authorization": f"Bearer {TOKEN}"})
    with bearer as ws:
        assert unpackb(ws.recv())["protocol"] == "openpi"
    health = server.openpi_url.replace("ws://", "http://") + "/healthz"
    with urllib.request.urlopen(health, timeout=10) as r:
        assert r.status == 200 and r.read() == b"OK\n"


def test_metrics_count_openpi_requests(server):
    with pytest.raises(InvalidStatus):
        open_ws(server, "wrong")
    with open_ws(server) as ws:
        ws.recv()
        ws.send((FRAMES / "observation.msgpack").read_bytes())
        ws.recv()
    with urllib.request.urlopen(server.metrics_url, timeout=10) as r:
        text = r.read().decode()
    assert re.search(r'energy_rerank_requests_total\{method="SelectAction",protocol="openpi"\} [1-9]', text)
    assert re.search(r'energy_rerank_errors_total\{code="UNAUTHENTICATED",protocol="openpi"\} [1-9]', text)
    assert 'stage_seconds_count{method="SelectAction",protocol="openpi",stage="total"}' in text


def test_tls_serves_wss(tmp_path):
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make a certificate")
    from test_security_tls_auth import self_signed  # the TLS tests' certificate maker

    cert, key = self_signed(tmp_path, "server")
    policy_dir, energy_dir = write_tiny_bundles(tmp_path / "bundles")
    args = ["--policy", str(policy_dir), "--energy", str(energy_dir), "--openpi-address", "127.0.0.1:0",
            "--openpi-keys", KEYS, "--tls-cert", str(cert), "--tls-key", str(key), "--log-level", "WARNING"]  # fmt: skip
    with ServerProcess(args) as srv:
        url = re.search(r"openpi protocol at (\S+)", srv.output).group(1)
        assert url.startswith("wss://127.0.0.1:")
        trusted = ssl.create_default_context(cafile=str(cert))
        with connect(url, ssl=trusted, max_size=None) as ws:
            ws.recv()
            ws.send((FRAMES / "observation.msgpack").read_bytes())
            assert unpackb(ws.recv())["actions"].shape == (8, 7)
        with pytest.raises(ssl.SSLError):
            connect(url, ssl=ssl.create_default_context(), open_timeout=10)  # not the server's certificate
