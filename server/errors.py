"""Typed server errors and the ONE place they become gRPC status codes.

Handlers never call `context.abort` themselves: they raise, and `ErrorInterceptor` maps the
exception to a status (and counts it by code in the metrics). An unexpected exception is
logged with its traceback and answered INTERNAL without leaking internals to the caller.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from energy_rerank.checkpoint import BundleError
from energy_rerank.reranker import PolicyFailure

log = logging.getLogger(__name__)


class InvalidInput(ValueError):
    """A request field is malformed; the message names the field and what was expected."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field


class Overloaded(RuntimeError):
    """The batcher's queue is full."""


class Unavailable(RuntimeError):
    """The server is loading or draining."""


class DeadlineExpired(TimeoutError):
    """The request's deadline passed before its batch ran."""


class AdminDisabled(PermissionError):
    """An admin call on a server without a token: nobody could be told apart from anybody."""


# Order matters: the first matching class wins (InvalidInput is a ValueError, so it comes first).
STATUS_OF: tuple[tuple[type[BaseException], grpc.StatusCode], ...] = (
    (InvalidInput, grpc.StatusCode.INVALID_ARGUMENT),
    (Overloaded, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (Unavailable, grpc.StatusCode.UNAVAILABLE),
    (DeadlineExpired, grpc.StatusCode.DEADLINE_EXCEEDED),
    (asyncio.TimeoutError, grpc.StatusCode.DEADLINE_EXCEEDED),
    (PolicyFailure, grpc.StatusCode.INTERNAL),
    (AdminDisabled, grpc.StatusCode.PERMISSION_DENIED),
    (BundleError, grpc.StatusCode.FAILED_PRECONDITION),  # a reload asked for a missing/unfit bundle
    (ValueError, grpc.StatusCode.INVALID_ARGUMENT),  # the core's own parameter checks
)


def status_of(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    for cls, code in STATUS_OF:
        if isinstance(exc, cls):
            return code, str(exc)
    return grpc.StatusCode.INTERNAL, f"internal error ({type(exc).__name__}); see the server log"


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    """Wraps every unary-unary handler: exception -> status code, counted by `on_error(code)`."""

    def __init__(self, on_error: Callable[[grpc.StatusCode], None] = lambda code: None) -> None:
        self._on_error = on_error

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler  # health watch and reflection streams handle their own errors
        inner = handler.unary_unary

        async def guarded(request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                return await inner(request, context)
            except asyncio.CancelledError:
                raise  # the client went away; nothing to answer
            except Exception as exc:
                if isinstance(exc, grpc.aio.AbortError):
                    self._on_error(context.code() or grpc.StatusCode.UNKNOWN)
                    raise
                code, message = status_of(exc)
                if code == grpc.StatusCode.INTERNAL and not isinstance(exc, PolicyFailure):
                    log.exception("unhandled error in %s", handler_call_details.method)
                self._on_error(code)
                await context.abort(code, message)

        return grpc.unary_unary_rpc_method_handler(
            guarded,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
