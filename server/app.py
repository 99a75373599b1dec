"""RerankServer: the grpc.aio server around a Reranker, with health, reflection, auth, metrics,
and the token-only admin service that hot-swaps the energy head (server/admin.py).

Lifecycle: `start()` binds and reports SERVING; `drain()` first reports NOT_SERVING (load
balancers stop sending), serves the model calls that reach it within the gate's accept window
and refuses later ones UNAVAILABLE, waits (up to the grace) until none is in flight, queued ones
included, and only then stops gRPC (see drain.py for why not gRPC's own graceful stop); then the
batcher and metrics stop.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from energy_rerank.reranker import Reranker
from energy_rerank.server._proto import rerank_pb2, rerank_pb2_grpc
from energy_rerank.server.admin import AdminServicer, EnergyHeadSwapper
from energy_rerank.server.auth import BearerTokenInterceptor
from energy_rerank.server.config import ServerConfig
from energy_rerank.server.errors import ErrorInterceptor
from energy_rerank.server.metrics import Metrics
from energy_rerank.server.servicer import RerankServicer

log = logging.getLogger(__name__)

SERVICE_NAME = rerank_pb2.DESCRIPTOR.services_by_name["RerankService"].full_name
ADMIN_SERVICE_NAME = rerank_pb2.DESCRIPTOR.services_by_name["RerankAdmin"].full_name
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]", "::1")


class RerankServer:
    def __init__(self, config: ServerConfig, reranker: Reranker) -> None:
        self.config = config
        self.metrics = Metrics()
        self.servicer = RerankServicer(reranker, config, self.metrics)
        self.swapper = EnergyHeadSwapper(self.servicer, config, self.metrics)
        self.health = health.aio.HealthServicer()
        interceptors: list[grpc.aio.ServerInterceptor] = []
        if config.auth_token is not None:
            interceptors.append(BearerTokenInterceptor(config.auth_token, self.metrics.count_error))
        interceptors.append(ErrorInterceptor(self.metrics.count_error))
        self.server = grpc.aio.server(
            interceptors=interceptors,
            options=[
                ("grpc.max_receive_message_length", config.max_message_bytes),
                ("grpc.so_reuseport", 0),  # a second server on the same port must fail, not share it
            ],
        )
        rerank_pb2_grpc.add_RerankServiceServicer_to_server(self.servicer, self.server)
        rerank_pb2_grpc.add_RerankAdminServicer_to_server(
            AdminServicer(self.swapper, auth_on=config.auth_token is not None), self.server
        )
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (
                SERVICE_NAME,
                ADMIN_SERVICE_NAME,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ),
            self.server,
        )
        self.port = self._bind()
        self.metrics_port: int | None = None
        # openpi websocket / OFT HTTP front ends: the same servicer, batcher, limits and drain
        self.front_ends: list[Any] = []
        if config.openpi_address is not None:
            from energy_rerank.server.openpi_frontend import OpenpiFrontEnd  # websockets: only when asked for

            self.front_ends.append(OpenpiFrontEnd(self.servicer, config))
        if config.oft_address is not None:
            from energy_rerank.server.oft_frontend import OftFrontEnd  # aiohttp: only when asked for

            self.front_ends.append(OftFrontEnd(self.servicer, config))

    def _bind(self) -> int:
        c = self.config
        if c.address.rsplit(":", 1)[0] not in LOOPBACK_HOSTS and c.tls_cert is None:
            log.warning(
                "binding %s beyond loopback without TLS: requests%s travel in clear text",
                c.address, " and the bearer token" if c.auth_token else "",
            )  # fmt: skip
        try:
            if c.tls_cert is not None and c.tls_key is not None:
                creds = grpc.ssl_server_credentials([(c.tls_key.read_bytes(), c.tls_cert.read_bytes())])
                port = self.server.add_secure_port(c.address, creds)
            else:
                port = self.server.add_insecure_port(c.address)
        except RuntimeError as e:  # grpc's way of saying the address is taken or malformed
            raise OSError(f"could not bind {c.address}: {e}") from e
        if not port:
            raise OSError(f"could not bind {c.address}")
        return port

    @property
    def address(self) -> str:
        host = self.config.address.rsplit(":", 1)[0]
        return f"{host}:{self.port}"

    async def start(self) -> None:
        self.servicer.batcher.start()
        await self.server.start()
        for front_end in self.front_ends:
            await front_end.start()
        if self.config.metrics_port is not None:
            self.metrics_port = self.metrics.serve(self.config.metrics_port, self.config.metrics_address)
        for name in ("", SERVICE_NAME):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)

    async def drain(self, grace: float | None = None) -> None:
        grace = self.config.drain_seconds if grace is None else grace
        log.info("draining: NOT_SERVING, then up to %.1f s for calls in flight", grace)
        t0 = time.monotonic()
        await self.health.enter_graceful_shutdown()
        for front_end in self.front_ends:
            front_end.start_draining()  # its health check answers 503 too
        gate = self.servicer.gate
        if not await gate.drain(grace, self.config.drain_accept_seconds):
            log.warning("%d model calls still in flight after the %.1f s grace: cancelled", gate.inflight, grace)
        for front_end in self.front_ends:
            await front_end.stop()
        # What is left (info, health, a hot swap) gets the rest of the grace.
        await self.server.stop(max(0.0, grace - (time.monotonic() - t0)))
        await self.servicer.batcher.close()
        self.servicer.close()
        self.metrics.close()

    async def wait_for_termination(self) -> None:
        await self.server.wait_for_termination()
