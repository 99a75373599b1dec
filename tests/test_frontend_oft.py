"""The OpenVLA-OFT front end against the real server (`energy-rerank serve --oft-address`) in a
subprocess: requests are built with the json-numpy package exactly as OFT's client sends them
(`json_numpy.patch()` makes `requests.post(url, json=obs)` write `json_numpy.dumps(obs)`), and
answers decoded as its client decodes them (`response.json()` = `json_numpy.loads(text)`).
"""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from typing import Any

import json_numpy
import numpy as np
import pytest

from energy_rerank.server.testing import LIBERO_CAMERAS, ServerProcess, write_tiny_bundles

TOKEN = "oft-token-9d1e"
H, A = 8, 7


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("oft")
    # LIBERO's layout, as OFT's LIBERO client sends it: two cameras and an 8-D proprio state
    policy_dir, energy_dir = write_tiny_bundles(root / "bundles", cameras=LIBERO_CAMERAS, lowdim_dim=0, state_dim=8)
    args = ["--policy", str(policy_dir), "--energy", str(energy_dir), "--oft-address", "127.0.0.1:0",
            "--max-message-mb", "1", "--log-level", "WARNING"]  # fmt: skip
    with ServerProcess(args, env={"ENERGY_RERANK_TOKEN": TOKEN}) as srv:
        srv.oft_url = re.search(r"oft protocol at (\S+)", srv.output).group(1)  # type: ignore[attr-defined]
        yield srv


def observation(seed: int = 0, **extra: Any) -> dict[str, Any]:
    """What OFT's LIBERO client posts (experiments/robot/libero/run_libero_eval.py)."""
    rng = np.random.default_rng(seed)
    return {
        "full_image": rng.integers(0, 256, (224, 224, 3), dtype=np.uint8),
        "wrist_image": rng.integers(0, 256, (224, 224, 3), dtype=np.uint8),
        "state": rng.normal(size=8),  # float64, as OFT concatenates it
        "instruction": "pick up the alphabet soup and place it in the basket",
        **extra,
    }


def post(server, body: bytes | str, token: str | None = TOKEN) -> tuple[int, bytes, dict[str, str]]:  # type: ignore[no-untyped-def]
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Api-Key {token}"
    data = body.encode() if isinstance(body, str) else body
    request = urllib.request.Request(server.oft_url, data=data, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=60) as r:
            return r.status, r.read(), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read(), dict(e.headers)


def test_act_answers_what_oft_client_expects(server):
    status, body, headers = post(server, json_numpy.dumps(observation(0, **{"rerank/seed": 5, "rerank/num_candidates": 16})))
    assert status == 200, body
    actions = json_numpy.loads(body)  # OFT's client: requests' response.json() under json_numpy.patch()
    assert isinstance(actions, list) and len(actions) == H
    assert all(isinstance(a, np.ndarray) and a.shape == (A,) and a.dtype == np.float32 for a in actions)
    assert np.isfinite(np.stack(actions)).all() and (np.abs(np.stack(actions)) <= 1 + 1e-6).all()
    assert 0 <= int(headers["X-Energy-Rerank-Chosen-Index"]) < 16
    assert headers["X-Energy-Rerank-Fallback"] == "false" and float(headers["X-Energy-Rerank-Infer-Ms"]) > 0
    assert headers["X-Energy-Rerank-Model-Version"].startswith("reference-tiny@")
    # the seed fixes the candidates; the double-encoded form answers the same actions, double-encoded
    obs = observation(0, **{"rerank/seed": 5, "rerank/num_candidates": 16})
    status, body, _ = post(server, json.dumps({"encoded": json_numpy.dumps(obs)}))
    assert status == 200
    again = json_numpy.loads(json.loads(body))  # OFT's double-encoded answer: a JSON string of json-numpy
    assert all(np.array_equal(a, b) for a, b in zip(actions, again, strict=True))


def test_oft_step_loop_runs(server):
    """OFT's loop: post, take the chunk's actions one by one, post again."""
    executed = 0
    for step in range(3):
        status, body, _ = post(server, json_numpy.dumps(observation(step)))
        assert status == 200
        for action in json_numpy.loads(body)[:H]:
            assert action.shape == (A,)
            executed += 1
    assert executed == 3 * H


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ("{", 400, "body: not JSON"),
        ("[1, 2]", 400, "observation: must be a map"),
        (json_numpy.dumps({"instruction": "x"}), 400, "full_image: required"),
        (json_numpy.dumps({k: v for k, v in observation().items() if k != "wrist_image"}), 400,
         "observation: no image for the policy's camera 'eye_in_hand' (2 of ['agentview', 'eye_in_hand'])"),
        (json_numpy.dumps(observation(wrist_image=np.zeros((4, 4), np.uint8))), 400, "wrist_image: image of shape"),
        (json_numpy.dumps(observation(state=np.zeros(3))), 400, "state: shape [3], expected float32 [8]"),
        (json_numpy.dumps(observation(state=np.full(8, np.inf))), 400, "state: contains NaN or Inf"),
        (json_numpy.dumps(observation(full_image=np.zeros((8, 8, 3)))), 400, "full_image: image dtype float64"),
        ('{"full_image": {"__numpy__": "AAAA", "dtype": "|O", "shape": [3]}}', 400, "body: array dtype '|O'"),
        ('{"full_image": {"__numpy__": "AAAA", "dtype": "|u1", "shape": [1000000000, 3]}}', 400,
         "body: array of shape [1000000000, 3] |u1 needs 3000000000 bytes, got 3"),
        (json.dumps({"encoded": 3}), 400, "encoded: must be the only key"),
        (json_numpy.dumps(observation(**{"rerank/num_candidates": 5000})), 400, "rerank/num_candidates: 5000 is outside"),
    ],
)  # fmt: skip
def test_bad_request_gets_http_error_naming_the_key(server, body, status, message):
    got, text, _ = post(server, body)
    assert got == status
    error = json.loads(text)
    assert error["code"] == "INVALID_ARGUMENT" and error["error"].startswith(message), error


def test_token_size_limit_and_health(server):
    assert post(server, json_numpy.dumps(observation()), token=None)[0] == 401
    status, text, _ = post(server, json_numpy.dumps(observation()), token="wrong")
    assert status == 401 and json.loads(text)["code"] == "UNAUTHENTICATED"
    status, text, _ = post(server, b" " * (2 * 2**20))  # over --max-message-mb 1
    assert status == 413 and json.loads(text)["code"] == "RESOURCE_EXHAUSTED"
    with urllib.request.urlopen(server.oft_url.replace("/act", "/healthz"), timeout=10) as r:
        assert r.status == 200 and r.read() == b"OK\n"
    with urllib.request.urlopen(server.metrics_url, timeout=10) as r:
        metrics = r.read().decode()
    assert re.search(r'energy_rerank_errors_total\{code="UNAUTHENTICATED",protocol="oft"\} [1-9]', metrics)
    assert re.search(r'energy_rerank_errors_total\{code="RESOURCE_EXHAUSTED",protocol="oft"\} [1-9]', metrics)
