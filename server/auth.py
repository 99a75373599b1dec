"""Bearer-token authentication: `authorization: Bearer <token>` metadata on every call.

The gRPC health service is exempt so load balancers and orchestrators can probe without the
secret. Tokens are compared in constant time. Without TLS the token crosses the network in
clear text: use TLS whenever the server binds beyond loopback.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, Sequence

import grpc

EXEMPT_PREFIXES = ("/grpc.health.v1.Health/",)


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, token: str, on_reject: Callable[[grpc.StatusCode], None] = lambda code: None) -> None:
        self._token = token
        self._on_reject = on_reject

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or details.method.startswith(EXEMPT_PREFIXES):
            return handler
        problem = self._problem(details.invocation_metadata or ())
        if problem is None:
            return handler
        self._on_reject(grpc.StatusCode.UNAUTHENTICATED)
        return _rejecting(handler, problem)

    def _problem(self, metadata: tuple) -> str | None:
        values = [v for k, v in metadata if k == "authorization"]
        if not values:
            return "missing 'authorization: Bearer <token>' metadata"
        return authorization_problem(values[0], self._token)


def authorization_problem(value: str | bytes, token: str, schemes: Sequence[str] = ("Bearer",)) -> str | None:
    """What is wrong with one authorization value (`<scheme> <token>`), or None when it carries
    the token; compared in constant time. The websocket and HTTP front ends also accept openpi's
    `Api-Key` scheme."""
    got = value.encode() if isinstance(value, str) else bytes(value)
    ok = False
    for scheme in schemes:  # every scheme compared, so the time does not say which one was close
        ok |= hmac.compare_digest(got, f"{scheme} {token}".encode())
    return None if ok else f"wrong {' or '.join(s.lower() for s in schemes)} token"


def _rejecting(handler: grpc.RpcMethodHandler, message: str) -> grpc.RpcMethodHandler:
    """A handler of the same kind as `handler` that answers UNAUTHENTICATED."""

    async def unary(request: object, context: grpc.aio.ServicerContext) -> None:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    async def stream(request: object, context: grpc.aio.ServicerContext):  # type: ignore[no-untyped-def]
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)
        yield  # pragma: no cover - makes this an async generator

    io = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(unary, **io)
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(stream, **io)
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(unary, **io)
    return grpc.stream_stream_rpc_method_handler(stream, **io)
