"""Per-call overhead of the openpi websocket and OFT HTTP front ends against gRPC, in one run.

One real server (`energy-rerank serve --openpi-address --oft-address`, subprocess, loopback) with
a tiny LIBERO-layout policy (two cameras + 8-D state, random weights); each client sends the same
observation with two 224 x 224 RGB images (raw pixels on every protocol: RAW Image on gRPC,
msgpack-numpy arrays on openpi, json-numpy base64 on OFT), the protocols taking turns call by
call so load drift hits them alike. Per call: the client's round trip and the server's own
`total` (received -> answer ready); overhead = round trip - server total (transport, encoding on
both sides, and the front end's decoding before the server's clock starts). The table gives
medians and the overhead's difference to gRPC.

    python bench/protocols.py --requests 200 --n 1 64
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import statistics
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

PROTOCOLS = ("grpc", "openpi", "oft")


def observation(seed: int = 0) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    return {
        "images": [rng.integers(0, 256, (224, 224, 3), dtype=np.uint8) for _ in range(2)],
        "state": rng.normal(size=8).astype(np.float32),
        "instruction": "put the bowl on the plate",
    }


def address(output: str, protocol: str) -> str:
    """Where the server said a front end listens."""
    m = re.search(rf"{protocol} protocol at (\S+)", output)
    if m is None:
        raise RuntimeError(f"the server did not start its {protocol} front end:\n{output}")
    return m.group(1)


def callers(srv: Any, cameras: list[str], n: int, stack: contextlib.ExitStack) -> dict[str, Callable[[], float]]:
    """protocol -> a call returning the server's total seconds (the round trip is timed outside)."""
    import json_numpy
    from websockets.sync.client import connect

    from energy_rerank.server.numpy_msgpack import packb, unpackb
    from energy_rerank_client import RerankClient

    obs = observation()
    grpc_client = stack.enter_context(RerankClient(srv.address, timeout=30))
    url = address(srv.output, "openpi")
    ws = stack.enter_context(connect(url, compression=None, max_size=None))
    ws.recv()  # metadata
    oft_url = address(srv.output, "oft")
    openpi_frame = {"observation/image": obs["images"][0], "observation/wrist_image": obs["images"][1],
                    "observation/state": obs["state"], "prompt": obs["instruction"],
                    "rerank/num_candidates": n, "rerank/seed": 0}  # fmt: skip
    oft_obs = {"full_image": obs["images"][0], "wrist_image": obs["images"][1], "state": obs["state"],
               "instruction": obs["instruction"], "rerank/num_candidates": n, "rerank/seed": 0}  # fmt: skip

    def grpc_call() -> float:
        r = grpc_client.select(images=dict(zip(cameras, obs["images"], strict=True)), state=obs["state"],
                               instruction=obs["instruction"], num_candidates=n, seed=0)  # fmt: skip
        return r.timing["total"]

    def openpi_call() -> float:
        ws.send(packb(openpi_frame))  # encoding is part of the client's cost, as in openpi's client
        return unpackb(ws.recv())["server_timing"]["total_ms"] / 1e3

    def oft_call() -> float:
        body = json_numpy.dumps(oft_obs).encode()
        request = urllib.request.Request(oft_url, data=body, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as r:
            json_numpy.loads(r.read())
            return float(r.headers["X-Energy-Rerank-Infer-Ms"]) / 1e3

    return {"grpc": grpc_call, "openpi": openpi_call, "oft": oft_call}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=200, help="timed calls per protocol and N (default: %(default)s)")
    p.add_argument("--warmup", type=int, default=10, help="untimed calls per protocol first (default: %(default)s)")
    p.add_argument("--n", type=int, nargs="+", default=[1, 64], help="candidates per call (default: 1 64)")
    p.add_argument("--out", type=Path, default=Path("bench/results/protocols.json"))
    args = p.parse_args(argv)

    from energy_rerank.server.testing import LIBERO_CAMERAS, ServerProcess, write_tiny_bundles

    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        policy, energy = write_tiny_bundles(tmp, cameras=LIBERO_CAMERAS, lowdim_dim=0, state_dim=8)
        server_args = ["--policy", str(policy), "--energy", str(energy), "--backend", "torch", "--max-batch", "1",
                       "--openpi-address", "127.0.0.1:0", "--oft-address", "127.0.0.1:0", "--log-level", "WARNING"]  # fmt: skip
        with ServerProcess(server_args) as srv:
            for n in args.n:
                stack = contextlib.ExitStack()
                calls = callers(srv, list(LIBERO_CAMERAS), n, stack)
                for proto in PROTOCOLS:
                    for _ in range(args.warmup):
                        calls[proto]()
                samples: dict[str, list[tuple[float, float]]] = {proto: [] for proto in PROTOCOLS}
                for _ in tqdm(range(args.requests), desc=f"N={n}", unit="round"):
                    for proto in PROTOCOLS:
                        t0 = time.perf_counter()
                        server = calls[proto]()
                        samples[proto].append((time.perf_counter() - t0, server))
                stack.close()
                grpc_overhead = statistics.median(c - s for c, s in samples["grpc"])
                for proto in PROTOCOLS:
                    client = [c for c, _ in samples[proto]]
                    overhead = [c - s for c, s in samples[proto]]
                    rows.append({
                        "protocol": proto, "n": n, "requests": args.requests,
                        "client_ms_p50": statistics.median(client) * 1e3,
                        "client_ms_p90": float(np.percentile(client, 90)) * 1e3,
                        "server_ms_p50": statistics.median(s for _, s in samples[proto]) * 1e3,
                        "overhead_ms_p50": statistics.median(overhead) * 1e3,
                        "overhead_vs_grpc_ms": (statistics.median(overhead) - grpc_overhead) * 1e3,
                    })  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=2))
    print("| protocol | N | client p50 ms | client p90 ms | server p50 ms | overhead p50 ms | overhead vs gRPC ms |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['protocol']} | {r['n']} | {r['client_ms_p50']:.2f} | {r['client_ms_p90']:.2f} | "
              f"{r['server_ms_p50']:.2f} | {r['overhead_ms_p50']:.2f} | {r['overhead_vs_grpc_ms']:+.2f} |")  # fmt: skip
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
