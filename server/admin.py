"""Model updates without downtime: swap the energy head on a running server.

Triggered by the `RerankAdmin.ReloadEnergyHead` RPC (behind the bearer token) or by SIGHUP
(server/main.py). The new head is loaded on a side thread and warmed up on the inference thread
between two batches; then `servicer.reranker` is replaced. Each batch reads that attribute once,
so a batch already running finishes on the old head and every response carries the version of
the head that made it. A bundle that fails to load or does not fit leaves the old head serving.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import grpc

from energy_rerank.server._proto import rerank_pb2 as pb
from energy_rerank.server._proto import rerank_pb2_grpc
from energy_rerank.server.config import ServerConfig
from energy_rerank.server.errors import AdminDisabled
from energy_rerank.server.metrics import Metrics
from energy_rerank.server.models import warm_up, with_energy_head
from energy_rerank.server.servicer import RerankServicer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Swap:
    previous_version: str  # model_version before
    model_version: str  # model_version from now on
    seconds: float  # load + check + warm-up


class EnergyHeadSwapper:
    def __init__(self, servicer: RerankServicer, config: ServerConfig, metrics: Metrics) -> None:
        self.servicer = servicer
        self.config = config
        self.metrics = metrics
        self.energy_path: Path = config.energy_path  # what an empty request / SIGHUP reloads
        self._lock = asyncio.Lock()  # two reloads at once would race for the last word

    async def reload(self, energy_path: str | Path | None = None) -> Swap:
        path = Path(energy_path) if energy_path else self.energy_path
        async with self._lock:
            t0 = time.perf_counter()
            old = self.servicer.reranker
            try:
                # Loading reads files and builds modules: off the event loop and off the inference
                # thread, so requests keep being answered meanwhile.
                new = await asyncio.get_running_loop().run_in_executor(
                    None, with_energy_head, old, path, self.config
                )
                # One request only: capturing every CUDA-graph bucket here would hold the inference thread
                # for seconds; the rest are captured on first use.
                # between batches, in the one queue like a request (a full queue refuses the reload too)
                await self.servicer.batcher.call(lambda: warm_up(new))
                self.servicer.use(new)  # with_energy_head has refused an unreadable selection.json
            except Exception:
                self.metrics.reloads.labels(result="error").inc()
                raise
            self.energy_path = path
            self.metrics.reloads.labels(result="ok").inc()
        swap = Swap(old.model_version, new.model_version, time.perf_counter() - t0)
        log.info(
            "energy head swapped: %s -> %s (%.2f s)", swap.previous_version, swap.model_version, swap.seconds
        )
        return swap


class AdminServicer(rerank_pb2_grpc.RerankAdminServicer):
    """Translate and delegate; the bearer-token interceptor has already checked the caller."""

    def __init__(self, swapper: EnergyHeadSwapper, auth_on: bool) -> None:
        self.swapper = swapper
        self.auth_on = auth_on

    async def ReloadEnergyHead(self, request: pb.ReloadEnergyHeadRequest, context: grpc.aio.ServicerContext):
        if not self.auth_on:
            raise AdminDisabled("admin calls need a server started with a token (ENERGY_RERANK_TOKEN or "
                                "--token-file); use SIGHUP on the server process instead")  # fmt: skip
        swap = await self.swapper.reload(request.energy_path or None)
        return pb.ReloadEnergyHeadResponse(
            previous_version=swap.previous_version,
            model_version=swap.model_version,
            load_seconds=swap.seconds,
        )
