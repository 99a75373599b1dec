"""Run the server until SIGINT/SIGTERM, then drain; SIGHUP reloads the energy head. Started by
`energy-rerank serve` (server/cli.py)."""

from __future__ import annotations

import asyncio
import logging
import signal

from energy_rerank.server.app import RerankServer
from energy_rerank.server.config import ServerConfig
from energy_rerank.server.models import describe_switch_margin, load_reranker, warm_up

log = logging.getLogger("energy_rerank.server")


async def serve(config: ServerConfig) -> None:
    reranker = load_reranker(config)
    warm_up(reranker, config.batch.max_batch)
    server = RerankServer(config, reranker)
    # Handlers before "listening" is printed: whoever reads that line may signal at once.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    reloads: set[asyncio.Task] = set()  # strong references: the loop keeps only weak ones

    def on_sighup() -> None:
        task = loop.create_task(reload(server))
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGHUP, on_sighup)
    await server.start()
    scheme = "https (TLS)" if config.tls_cert else "insecure"
    print(
        f"energy-rerank: serving {reranker.model_version} ({reranker.scorer.name} scorer, {config.device}; "
        f"{describe_switch_margin(reranker.switch_margin)})",
        flush=True,
    )
    print(f"energy-rerank: listening on {server.address} ({scheme}, auth {'on' if config.auth_token else 'off'})",
          flush=True)  # fmt: skip
    for front_end in server.front_ends:
        print(f"energy-rerank: {front_end.core.protocol} protocol at {front_end.url}", flush=True)
    if server.metrics_port is not None:
        print(
            f"energy-rerank: metrics at http://{config.metrics_address}:{server.metrics_port}/metrics",
            flush=True,
        )
    await stop.wait()
    print(f"energy-rerank: draining (up to {config.drain_seconds} s)", flush=True)
    await server.drain()
    print("energy-rerank: stopped", flush=True)


async def reload(server: RerankServer) -> None:
    """SIGHUP: reload the energy head from its current path; a failure keeps the old head serving."""
    try:
        swap = await server.swapper.reload()
    except Exception as e:
        print(
            f"energy-rerank: reload failed, still serving the old head: {type(e).__name__}: {e}", flush=True
        )
        return
    print(f"energy-rerank: reloaded {swap.previous_version} -> {swap.model_version} ({swap.seconds:.2f} s)",
          flush=True)  # fmt: skip
