"""Bearer-token authentication: `authorization: Bearer <token>` metadata on every call.

The gRPC health service is exempt so load balancers and orchestrators can probe without the
secret. Tokens are compared in constant time. Without TLS the token crosses the network in
clear text: use TLS whenever the server binds beyond loopback.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable

import grpc

EXEMPT_PREFIXES = ("/grpc.health.v1.Health/",)


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, token: str, on_reject: Callable[[grpc.StatusCode], None] = lambda code: None) -> None:
        self._expected = f"Bearer {token}".encode()
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
        got = values[0].encode() if isinstance(values[0], str) else values[0]
        if not hmac.compare_digest(got, self._expected):
            return "wrong bearer token"
        return None


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
