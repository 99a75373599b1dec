"""What the openpi websocket and OFT HTTP front ends share.

Both translate a client's dict observation into the SelectActionRequest gRPC would receive
(`observation_keys`) and hand it to `RerankServicer.select`: the same drain gate, validation,
pixel budget, batcher, queue limit and metrics as gRPC. Here: the token check (openpi's
`Api-Key` scheme or gRPC's `Bearer`), turning an error into the gRPC status `errors.status_of`
gives it (counted under the front end's protocol), TLS from the server's certificate flags, and
the diagnostics every answer carries.
"""

from __future__ import annotations

import logging
import ssl
from typing import Any

import grpc

from energy_rerank.policy.base import PolicyDescription
from energy_rerank.reranker import PolicyFailure
from energy_rerank.server.auth import authorization_problem
from energy_rerank.server.config import ServerConfig
from energy_rerank.server.errors import InvalidInput, LogThrottle, status_of
from energy_rerank.server.observation_keys import ObservationKeys, client_error, to_request
from energy_rerank.server.servicer import Answer, RerankServicer

log = logging.getLogger(__name__)
TOKEN_SCHEMES = ("Api-Key", "Bearer")  # openpi's WebsocketClientPolicy(api_key=...) sends Api-Key


def split_address(address: str, flag: str) -> tuple[str, int]:
    """'127.0.0.1:8000' -> ('127.0.0.1', 8000); '[::1]:0' -> ('::1', 0)."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"{flag} {address!r}: expected HOST:PORT")
    return host.strip("[]"), int(port)


def server_ssl(config: ServerConfig) -> ssl.SSLContext | None:
    """TLS with the certificate gRPC serves (--tls-cert/--tls-key), or None without it."""
    if config.tls_cert is None or config.tls_key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(config.tls_cert, config.tls_key)
    return context


class FrontEnd:
    """One non-gRPC protocol's access to the servicer."""

    def __init__(self, servicer: RerankServicer, config: ServerConfig, protocol: str) -> None:
        self.servicer = servicer
        self.config = config
        self.protocol = protocol  # the metrics' protocol label: "openpi" or "oft"
        self.draining = False  # set when the server drains: health answers 503 from then on
        self._throttle = LogThrottle(log)

    @property
    def description(self) -> PolicyDescription:
        return self.servicer.reranker.proposer.description

    def auth_problem(self, header: str | None) -> str | None:
        """None when auth is off or the Authorization header carries the token; else what is wrong
        (counted as UNAUTHENTICATED)."""
        token = self.config.auth_token
        if token is None:
            return None
        problem = (
            "missing 'Authorization: Api-Key <token>' (or 'Bearer <token>') header"
            if not header
            else authorization_problem(header, token, TOKEN_SCHEMES)
        )
        if problem is not None:
            self.servicer.metrics.count_error(grpc.StatusCode.UNAUTHENTICATED, self.protocol)
        return problem

    async def select(self, obs: Any, keys: ObservationKeys, received: float) -> Answer:
        """A client's dict observation, answered as gRPC's SelectAction would; errors name its keys."""
        desc = self.description
        try:
            request = to_request(obs, keys, desc)
            return await self.servicer.select(request, None, self.protocol, received)
        except InvalidInput as e:
            raise client_error(e, keys, desc) from None

    def failure(self, exc: BaseException) -> tuple[grpc.StatusCode, str]:
        """The status and message an exception is answered with, counted under this protocol."""
        code, message = status_of(exc)
        if code == grpc.StatusCode.INTERNAL and not isinstance(exc, PolicyFailure):
            self._throttle(logging.ERROR, f"unhandled {type(exc).__name__}", "unhandled error in %s SelectAction",
                           self.protocol, exc_info=True)  # fmt: skip
        self.servicer.metrics.count_error(code, self.protocol)
        return code, message


def diagnostics(answer: Answer) -> dict[str, Any]:
    """Everything an answer says besides the chunk, in plain values (no arrays: openpi's
    ActionChunkBroker slices every array it finds along the chunk's steps)."""
    s = answer.selection
    timing = {f"{stage}_ms": seconds * 1e3 for stage, seconds in answer.timing.items()}
    return {
        "energies": [float(e) for e in s.energies],  # [N]; lower is better; [] when scoring failed
        "chosen_index": int(s.index),  # 0 = the policy's own chunk
        "fallback": bool(s.fallback),  # the policy's chunk because scoring failed
        "fallback_reason": s.fallback_reason,
        "model_version": answer.model_version,
        "batch_size": int(answer.batch_size),
        # openpi's server reports its time as server_timing.infer_ms; the stages beside it
        "server_timing": {"infer_ms": timing["total_ms"], **timing},
    }
