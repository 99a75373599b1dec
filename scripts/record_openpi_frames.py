"""Record what openpi's own client library packs, for the openpi front end's CI test.

Run with the real `openpi-client` (it needs numpy < 2, so in its own environment):

    python3 -m venv .venv-openpi && .venv-openpi/bin/pip install openpi-client==0.1.2 typing_extensions
    .venv-openpi/bin/python scripts/record_openpi_frames.py tests/data/openpi_frames

It writes one `<name>.msgpack` per sample below, packed by `openpi_client.msgpack_numpy`.
tests/test_frontend_openpi.py rebuilds the same samples (this file needs only numpy to import)
and checks that the server's encoder packs them to the same bytes and decodes the recorded ones.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np


def samples() -> dict[str, Any]:
    """Deterministic frames of each kind the protocol carries."""
    rng = np.random.default_rng(0)
    return {
        # openpi's LIBERO example observation (small images: the policy resizes them), with the
        # optional per-request keys, a float64 state as that client sends it, and a numpy scalar
        "observation": {
            "observation/image": rng.integers(0, 256, (16, 16, 3), dtype=np.uint8),
            "observation/wrist_image": rng.integers(0, 256, (16, 16, 3), dtype=np.uint8),
            "observation/state": rng.normal(size=25),
            "prompt": "pick up the alphabet soup and place it in the basket",
            "rerank/num_candidates": 16,
            "rerank/seed": 7,
            "rerank/switch_margin": np.float32(0.0),
        },
        # an answer: the chunk as an array, everything else as plain values
        "answer": {
            "actions": rng.uniform(-1, 1, (8, 7)).astype(np.float32),
            "energies": [1.5, 0.25, 3.0],
            "chosen_index": 1,
            "fallback": False,
            "fallback_reason": "",
            "model_version": "reference-tiny@0+energy@0",
            "batch_size": 1,
            "server_timing": {"infer_ms": 12.5, "queue_ms": 0.125},
        },
        # metadata: nested values, an infinite float, integer and float arrays
        "metadata": {
            "server": "energy-rerank",
            "chunk_len": 8,
            "cameras": ["agentview"],
            "switch_margin": float("inf"),
            "action_low": np.full(7, -1.0, np.float32),
            "counts": np.arange(4, dtype=np.int64),
            "keys": {"state": "observation/state", "cameras": ["observation/image"]},
        },
    }


def main(out: str) -> None:
    from openpi_client import msgpack_numpy  # the real client library

    directory = Path(out)
    directory.mkdir(parents=True, exist_ok=True)
    for name, obj in samples().items():
        (directory / f"{name}.msgpack").write_bytes(msgpack_numpy.packb(obj))
        print(f"wrote {directory / name}.msgpack")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "tests/data/openpi_frames")
