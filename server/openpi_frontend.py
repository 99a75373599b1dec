"""openpi's websocket policy protocol (`serve --openpi-address HOST:PORT`), so a robot running
openpi's `WebsocketClientPolicy` (+ `ActionChunkBroker`) needs only the new address.

The protocol, as openpi's `WebsocketPolicyServer` speaks it:
- on connect the server sends one binary frame: its metadata (here: GetModelInfo's fields, the
  observation keys it reads and the protocol name), msgpack with openpi's numpy encoding;
- then every binary frame the client sends is one observation dict, answered by one binary frame
  whose "actions" is the chosen chunk [H, A] (float32, robot units, inside the bounds), plus
  diagnostics the broker will not slice (plain values): "energies" [N], "chosen_index",
  "fallback", "fallback_reason", "model_version", "batch_size" and "server_timing" (infer_ms,
  and every stage in ms; "prev_total_ms" is the previous request's time to answer);
- an error is answered with a text frame ("INVALID_ARGUMENT: observation/state: ...") and close
  code 1011, as openpi does; its client raises it as a RuntimeError. A frame over
  --max-message-mb is closed with 1009 (message too big) by the websocket layer itself;
- newer openpi clients' control frames ({"__ctrl__": ...}) are acknowledged ({"__ack__": ...});
- `GET /healthz` answers 200 "OK" while serving and 503 once draining, without a token.

Observation keys map to the policy's inputs through `ObservationKeys` (default: openpi's LIBERO
example); `rerank/num_candidates`, `rerank/seed` and `rerank/switch_margin` choose N, the seed and
the margin per request. With a token, the upgrade request needs `Authorization: Api-Key <token>`
(openpi's `api_key=`) or `Bearer <token>`; else 401. With --tls-cert it serves wss://.
"""

from __future__ import annotations

import http
import logging
import time
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.frames import CloseCode
from websockets.http11 import Request, Response

from energy_rerank.config import config_to_dict
from energy_rerank.server import codec
from energy_rerank.server.config import ServerConfig
from energy_rerank.server.errors import InvalidInput
from energy_rerank.server.front_end import FrontEnd, diagnostics, server_ssl, split_address
from energy_rerank.server.numpy_msgpack import packb, unpackb
from energy_rerank.server.servicer import RerankServicer

log = logging.getLogger(__name__)
# The websocket library's own log: one line per refused handshake or bad frame is client-driven
# noise at INFO; its warnings and errors still show.
logging.getLogger("websockets.server").setLevel(logging.WARNING)
PROTOCOL = "openpi"
CONTROL_KEY = "__ctrl__"


class OpenpiFrontEnd:
    def __init__(self, servicer: RerankServicer, config: ServerConfig) -> None:
        if config.openpi_address is None:
            raise ValueError("openpi front end without --openpi-address")
        self.core = FrontEnd(servicer, config, PROTOCOL)
        self.config = config
        self.keys = config.openpi_keys
        self._host, self._port = split_address(config.openpi_address, "--openpi-address")
        self._server: Server | None = None
        self.port: int | None = None  # bound port, after start()

    @property
    def url(self) -> str:
        scheme = "wss" if self.config.tls_cert else "ws"
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"{scheme}://{host}:{self.port}"

    async def start(self) -> None:
        try:
            self._server = await serve(
                self._connection,
                self._host,
                self._port,
                ssl=server_ssl(self.config),
                compression=None,  # as openpi: frames are mostly raw image bytes
                max_size=self.config.max_message_bytes,
                process_request=self._http,
                server_header=None,
            )
        except OSError as e:
            raise OSError(f"could not bind --openpi-address {self.config.openpi_address}: {e}") from e
        self.port = int(next(iter(self._server.sockets)).getsockname()[1])

    def start_draining(self) -> None:
        self.core.draining = True

    async def stop(self) -> None:
        """After the drain: open connections are closed with 1001 (going away)."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    # ------------------------------------------------------------------ handshake
    def _http(self, connection: ServerConnection, request: Request) -> Response | None:
        """Health (no token), then the token and the drain, before the connection is upgraded."""
        if request.path == "/healthz":
            if self.core.draining:
                return connection.respond(http.HTTPStatus.SERVICE_UNAVAILABLE, "draining\n")
            return connection.respond(http.HTTPStatus.OK, "OK\n")
        problem = self.core.auth_problem(_header(request.headers, "Authorization"))
        if problem is not None:
            return connection.respond(http.HTTPStatus.UNAUTHORIZED, f"{problem}\n")
        if self.core.draining:
            return connection.respond(http.HTTPStatus.SERVICE_UNAVAILABLE, "server is draining\n")
        return None

    # ------------------------------------------------------------------ frames
    async def _connection(self, ws: ServerConnection) -> None:
        await ws.send(packb(self.metadata()))
        previous: float | None = None  # the last request's receipt -> answer sent, seconds
        while True:
            try:
                frame = await ws.recv()
            except ConnectionClosed:
                return
            received = time.perf_counter()
            try:
                reply = await self._answer(frame, previous)
            except Exception as e:  # every error ends the connection, as in openpi
                code, message = self.core.failure(e)
                try:
                    await ws.send(f"{code.name}: {message}")
                    await ws.close(CloseCode.INTERNAL_ERROR, code.name)
                except ConnectionClosed:
                    pass
                return
            try:
                await ws.send(reply)
            except ConnectionClosed:
                return
            previous = time.perf_counter() - received

    async def _answer(self, frame: str | bytes, previous: float | None) -> bytes:
        received = time.perf_counter()
        if isinstance(frame, str):
            raise InvalidInput("frame", "expected a binary msgpack frame, got a text frame")
        obs = unpackb(frame)
        if isinstance(obs, dict) and CONTROL_KEY in obs:  # episode_start / episode_end
            ctrl = obs[CONTROL_KEY]
            return packb({"__ack__": ctrl if ctrl in ("episode_start", "episode_end") else "ignored"})
        answer = await self.core.select(obs, self.keys, received)
        out: dict[str, Any] = {"actions": answer.selection.chunk.astype("<f4"), **diagnostics(answer)}  # [H, A]
        if previous is not None:
            out["server_timing"]["prev_total_ms"] = previous * 1e3
        return packb(out)

    def metadata(self) -> dict[str, Any]:
        """The first frame: what GetModelInfo says, the keys read, and the protocol."""
        s = self.core.servicer
        info = codec.encode_model_info(
            s.reranker, self.config.default_candidates, self.config.batch.max_batch, s.switch_rates
        )
        fields = {
            f.name: list(getattr(info, f.name)) if f.is_repeated else getattr(info, f.name)
            for f in info.DESCRIPTOR.fields
        }
        return {"server": "energy-rerank", "protocol": PROTOCOL, **fields, "keys": config_to_dict(self.keys)}


def _header(headers: Headers, name: str) -> str | None:
    values = headers.get_all(name)
    return values[0] if values else None
