"""OpenVLA-OFT's deploy protocol (`serve --oft-address HOST:PORT`), so a robot running OFT's
`get_action_from_server` needs only the new URL.

`POST /act` takes the JSON body OFT's client sends: json-numpy arrays (`numpy_json`) under
`full_image` (the policy's first camera), every key containing "wrist" (its next cameras, in the
order sent), `state` (proprio), `lowdim` (when the policy reads one) and `instruction`; or, as
OFT accepts it, `{"encoded": "<that JSON as a string>"}`. The answer is what OFT's server
returns: a JSON list of H per-step actions (json-numpy float32 [A], robot units, inside the
bounds), double-encoded as a JSON string when the request was. `rerank/num_candidates`,
`rerank/seed` and `rerank/switch_margin` in the body choose N, the seed and the margin.
Diagnostics travel in headers: X-Energy-Rerank-Chosen-Index, -Fallback, -Model-Version, -Infer-Ms.

Errors are HTTP error statuses with a JSON body {"code": <gRPC status name>, "error": <message
naming the key>} (OFT's own server answers the string "error" with 200): 400 bad input, 401 no or
wrong token (`Authorization: Api-Key <token>` or `Bearer <token>`), 413 a body over
--max-message-mb, 429 a full queue, 503 draining, 500 a policy failure. `GET /healthz` answers
200 while serving and 503 once draining, without a token. With --tls-cert it serves https.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Mapping

import grpc
from aiohttp import web

from energy_rerank.server.config import ServerConfig
from energy_rerank.server.errors import InvalidInput
from energy_rerank.server.front_end import FrontEnd, server_ssl, split_address
from energy_rerank.server.numpy_json import dumps, loads
from energy_rerank.server.observation_keys import ObservationKeys, sequence_keys
from energy_rerank.server.servicer import RerankServicer

log = logging.getLogger(__name__)
PROTOCOL = "oft"
# OFT's observation layout (experiments/robot: full_image, *wrist*, state, instruction)
OFT_KEYS = ObservationKeys(cameras=("full_image",), state="state", lowdim="lowdim", instruction="instruction")
HTTP_STATUS = {  # gRPC status (errors.status_of) -> HTTP status
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.FAILED_PRECONDITION: 412,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}


class OftFrontEnd:
    def __init__(self, servicer: RerankServicer, config: ServerConfig) -> None:
        if config.oft_address is None:
            raise ValueError("OFT front end without --oft-address")
        self.core = FrontEnd(servicer, config, PROTOCOL)
        self.config = config
        self._host, self._port = split_address(config.oft_address, "--oft-address")
        app = web.Application(client_max_size=config.max_message_bytes)
        app.router.add_post("/act", self._act)
        app.router.add_get("/healthz", self._health)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        self.port: int | None = None  # bound port, after start()

    @property
    def url(self) -> str:
        scheme = "https" if self.config.tls_cert else "http"
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"{scheme}://{host}:{self.port}/act"

    async def start(self) -> None:
        await self._runner.setup()
        # In-flight requests are over when stop() runs (the drain waited for them): no long grace.
        site = web.TCPSite(self._runner, self._host, self._port, ssl_context=server_ssl(self.config),
                           shutdown_timeout=1.0, reuse_port=False)  # fmt: skip
        try:
            await site.start()
        except OSError as e:
            await self._runner.cleanup()
            raise OSError(f"could not bind --oft-address {self.config.oft_address}: {e}") from e
        self.port = int(self._runner.addresses[0][1])

    def start_draining(self) -> None:
        self.core.draining = True

    async def stop(self) -> None:
        await self._runner.cleanup()

    async def _health(self, request: web.Request) -> web.Response:
        if self.core.draining:
            return web.Response(status=503, text="draining\n")
        return web.Response(text="OK\n")

    async def _act(self, request: web.Request) -> web.Response:
        received = time.perf_counter()
        problem = self.core.auth_problem(request.headers.get("Authorization"))
        if problem is not None:
            return _error(401, grpc.StatusCode.UNAUTHENTICATED, problem)
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            self.core.servicer.metrics.count_error(grpc.StatusCode.RESOURCE_EXHAUSTED, PROTOCOL)
            limit = self.config.max_message_bytes
            return _error(413, grpc.StatusCode.RESOURCE_EXHAUSTED, f"body: larger than {limit} bytes (--max-message-mb)")
        try:
            payload = loads(body)
            encoded = isinstance(payload, Mapping) and "encoded" in payload
            if encoded:
                if len(payload) != 1 or not isinstance(payload["encoded"], str):
                    raise InvalidInput("encoded", "must be the only key, holding the observation as a JSON string")
                payload = loads(payload["encoded"])
            keys = OFT_KEYS
            if isinstance(payload, Mapping):
                keys = dataclasses.replace(OFT_KEYS, cameras=tuple(sequence_keys(payload, "full_image", "wrist")))
            answer = await self.core.select(payload, keys, received)
        except Exception as e:
            code, message = self.core.failure(e)
            return _error(HTTP_STATUS.get(code, 500), code, message)
        s = answer.selection
        actions = dumps([step for step in s.chunk.astype("<f4")])  # H actions [A], as OFT returns them
        headers = {
            "X-Energy-Rerank-Chosen-Index": str(s.index),
            "X-Energy-Rerank-Fallback": "true" if s.fallback else "false",
            "X-Energy-Rerank-Model-Version": answer.model_version,
            "X-Energy-Rerank-Infer-Ms": f"{answer.timing['total'] * 1e3:.3f}",
        }
        text = json.dumps(actions) if encoded else actions
        return web.Response(text=text, content_type="application/json", headers=headers)


def _error(status: int, code: grpc.StatusCode, message: str) -> web.Response:
    return web.json_response({"code": code.name, "error": message}, status=status)
