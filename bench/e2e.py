"""End-to-end latency through the real server and client on loopback.

One server subprocess per batching setting (`energy-rerank serve` on a free 127.0.0.1 port);
`concurrency` threads each hold a RerankClient and send `requests` SelectAction calls. Each
request records the client-observed latency and the server's own stage timings, so the
gRPC + serialisation overhead is client latency minus server total.
"""

from __future__ import annotations

import io
import threading
import time
from dataclasses import dataclass

import numpy as np

BATCHING = {
    "off": ["--max-batch", "1"],
    "on": ["--max-batch", "32", "--max-delay-us", "2000"],
}


@dataclass
class Sample:
    client_s: float  # client-observed wall time of the call
    server: dict[str, float]  # the response's timing (queue, policy, candidates, score, total)
    batch_size: int  # requests that shared the server's model call


def jpeg(height: int, width: int, seed: int) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def observation(info, image_px: int, seed: int, min_cameras: int = 2) -> dict:  # type: ignore[no-untyped-def]
    """Kwargs for RerankClient.select matching what the served policy expects.

    At least `min_cameras` JPEG images travel (extra ones named extra_i) so the wire and decode
    cost of a typical two-camera robot is measured whatever the served policy reads.
    """
    rng = np.random.default_rng(seed)
    obs: dict = {"instruction": "pick up the red block"}
    cameras = list(info.cameras) + [f"extra_{i}" for i in range(max(0, min_cameras - len(info.cameras)))]
    if cameras:
        obs["images"] = {cam: jpeg(image_px, image_px, seed + i) for i, cam in enumerate(cameras)}
    if info.state_dim:
        obs["state"] = rng.normal(size=info.state_dim).astype(np.float32)
    if info.lowdim_dim:
        obs["lowdim"] = rng.normal(size=info.lowdim_dim).astype(np.float32)
    return obs


def run_load(address: str, concurrency: int, requests: int, n: int, image_px: int, seed: int = 0) -> tuple[list[Sample], float]:
    """`concurrency` clients x `requests` calls each -> (samples, wall seconds)."""
    from energy_rerank_client import RerankClient

    with RerankClient(address) as probe:
        info = probe.info()
    obs = [observation(info, image_px, seed + i) for i in range(concurrency)]
    samples: list[Sample] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    start = threading.Barrier(concurrency + 1)

    def worker(i: int) -> None:
        try:
            with RerankClient(address, timeout=60.0) as client:
                client.select(**obs[i], num_candidates=n, seed=i)  # warm the channel
                start.wait()
                for k in range(requests):
                    t0 = time.perf_counter()
                    r = client.select(**obs[i], num_candidates=n, seed=k)
                    dt = time.perf_counter() - t0
                    with lock:
                        samples.append(Sample(dt, r.timing, r.batch_size))
        except BaseException as e:  # reported after the join, never lost
            with lock:
                errors.append(e)
            start.abort()

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(concurrency)]
    for t in threads:
        t.start()
    try:
        start.wait()
    except threading.BrokenBarrierError:
        pass
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if errors:
        raise RuntimeError(f"{len(errors)} client(s) failed; first: {errors[0]!r}")
    return samples, wall


def summarize(samples: list[Sample], wall: float) -> dict[str, float]:
    """p50/p90/p99 in ms per stage, client latency, overhead, throughput, mean batch size."""
    out: dict[str, float] = {"requests": len(samples), "throughput_rps": len(samples) / wall}
    client = np.array([s.client_s for s in samples]) * 1e3
    total = np.array([s.server.get("total", np.nan) for s in samples]) * 1e3
    series = {"client": client, "overhead": client - total}
    for stage in ("queue", "policy", "candidates", "score", "total"):
        series[stage] = np.array([s.server.get(stage, np.nan) for s in samples]) * 1e3
    for name, values in series.items():
        for q in (50, 90, 99):
            out[f"{name}_p{q}_ms"] = float(np.nanpercentile(values, q))
    out["mean_batch"] = float(np.mean([s.batch_size for s in samples]))
    return out
