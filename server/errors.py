"""Typed server errors and the ONE place they become gRPC status codes.

Handlers never call `context.abort` themselves: they raise, and `ErrorInterceptor` maps the
exception to a status (and counts it by code in the metrics). An unexpected exception is
logged with its traceback and answered INTERNAL without leaking internals to the caller.

Request bytes are parsed here too, not inside gRPC: a message that does not parse as the
method's request type reaches gRPC's deserializer otherwise, which answers UNKNOWN and logs a
traceback per call, before any interceptor could count it or check the token. So every handler
is registered with its deserializer moved into the interceptor: bytes that do not parse get
INVALID_ARGUMENT, are counted, and are logged at most once per interval (`LogThrottle`).

Status messages may quote what the client sent (a dtype, a shape, a camera name); `quote`
bounds every such quote, and `status_of` bounds the whole message, so an error always fits the
client's metadata limit (8 KiB) and names the field.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc

from energy_rerank.checkpoint import BundleError
from energy_rerank.reranker import PolicyFailure

log = logging.getLogger(__name__)

QUOTE_CHARS = 64  # longest quote of a client-supplied value in a status message
MESSAGE_CHARS = 512  # longest status message (gRPC carries it as metadata; clients cap that at 8 KiB)
LOG_INTERVAL_SECONDS = 60.0  # a kind of problem clients can cause is logged at most once per this


def quote(value: object, limit: int = QUOTE_CHARS) -> str:
    """A client-supplied value as a status message may show it: repr, or a list's first items,
    cut to `limit` characters with the full length said. The one way client input is echoed."""
    if isinstance(value, (list, tuple)):
        shown = ", ".join(str(v) for v in value[:8])
        text = f"[{shown}{', ...' if len(value) > 8 else ''}]"
        if len(value) > 8:
            text += f" ({len(value)} items)"
    else:
        text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} chars)"


def clip(message: str, limit: int = MESSAGE_CHARS) -> str:
    """A status message cut to at most `limit` characters, saying it was."""
    if len(message) <= limit:
        return message
    suffix = f"... (cut, {len(message)} chars)"
    return message[: limit - len(suffix)] + suffix


class InvalidInput(ValueError):
    """A request field is malformed; the message names the field and what was expected."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field


class Overloaded(RuntimeError):
    """The batcher's queue is full, or the images in flight use the server's pixel budget."""


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
            return code, clip(str(exc))
    return grpc.StatusCode.INTERNAL, f"internal error ({type(exc).__name__}); see the server log"


class LogThrottle:
    """Logs one kind of event at most once per interval, with how many were left unlogged since:
    what a client can trigger at will must not be able to flood the log."""

    def __init__(self, logger: logging.Logger, interval: float = LOG_INTERVAL_SECONDS) -> None:
        self.logger = logger
        self.interval = interval
        self._last: dict[str, float] = {}  # kind -> time.monotonic() of its last line
        self._unlogged: dict[str, int] = {}  # kind -> events since that line

    def __call__(self, level: int, kind: str, message: str, *args: object, exc_info: bool = False) -> bool:
        """Log `message % args` unless `kind` was logged within the interval; -> whether it was."""
        now = time.monotonic()
        last = self._last.get(kind)
        if last is not None and now - last < self.interval:
            self._unlogged[kind] = self._unlogged.get(kind, 0) + 1
            return False
        unlogged = self._unlogged.pop(kind, 0)
        if unlogged and last is not None:
            message += f" (and {unlogged} more like it in the last {now - last:.0f} s)"
        self._last[kind] = now
        self.logger.log(level, message, *args, exc_info=exc_info)
        return True


@dataclass(frozen=True)
class _Undecodable:
    """What a stream's deserializer hands on for bytes that do not parse (raising there would
    escape to gRPC as UNKNOWN)."""

    error: Exception


def _request_type(parse: Callable[[bytes], Any] | None) -> str:
    descriptor = getattr(getattr(parse, "__self__", None), "DESCRIPTOR", None)
    return getattr(descriptor, "full_name", "the request type")


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    """Wraps every handler: request bytes parsed (undecodable: INVALID_ARGUMENT), and for unary
    calls exception -> status code; every error counted by `on_error(code)`."""

    def __init__(self, on_error: Callable[[grpc.StatusCode], None] = lambda code: None) -> None:
        self._on_error = on_error
        self._throttle = LogThrottle(log)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method
        parse = handler.request_deserializer
        out = {"response_serializer": handler.response_serializer}
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(self._unary(handler.unary_unary, parse, method), **out)
        if handler.unary_stream is not None:  # health's Watch
            return grpc.unary_stream_rpc_method_handler(
                self._unary_stream(handler.unary_stream, parse, method), **out
            )
        # Stream requests are parsed by gRPC as they are read (context.read() or the iterator), so
        # the deserializer stays there, made tolerant; the iterator turns a bad message into an error.
        tolerant = self._tolerant(parse)
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(
                self._stream(handler.stream_unary, parse, method, streams_out=False),
                request_deserializer=tolerant, **out,
            )  # fmt: skip
        return grpc.stream_stream_rpc_method_handler(
            self._stream(handler.stream_stream, parse, method, streams_out=True),
            request_deserializer=tolerant, **out,
        )  # fmt: skip

    # ------------------------------------------------------------------ parsing
    def _parse(self, raw: bytes, parse: Callable[[bytes], Any] | None, method: str) -> Any:
        if parse is None:
            return raw
        try:
            return parse(raw)
        except Exception as e:  # protobuf's DecodeError, or anything a custom deserializer raises
            raise self._undecodable(e, parse, method) from None

    def _undecodable(self, e: Exception, parse: Callable[[bytes], Any] | None, method: str) -> InvalidInput:
        name = _request_type(parse)
        self._throttle(logging.WARNING, "undecodable", "undecodable request to %s (%s: %s); answered "
                       "INVALID_ARGUMENT", method, type(e).__name__, clip(str(e), 200))  # fmt: skip
        return InvalidInput("request", f"the bytes do not parse as {name} ({type(e).__name__})")

    @staticmethod
    def _tolerant(parse: Callable[[bytes], Any] | None) -> Callable[[bytes], Any]:
        def deserialize(raw: bytes) -> Any:
            if parse is None:
                return raw
            try:
                return parse(raw)
            except Exception as e:
                return _Undecodable(e)

        return deserialize

    # ------------------------------------------------------------------ errors -> status
    async def _answer(self, exc: Exception, context: grpc.aio.ServicerContext, method: str) -> None:
        """Abort the call with the status `exc` maps to (raises grpc's AbortError)."""
        if isinstance(exc, grpc.aio.AbortError):  # the handler aborted itself (health, auth)
            self._on_error(context.code() or grpc.StatusCode.UNKNOWN)
            raise exc
        code, message = status_of(exc)
        if code == grpc.StatusCode.INTERNAL and not isinstance(exc, PolicyFailure):
            self._throttle(logging.ERROR, f"unhandled {type(exc).__name__}", "unhandled error in %s",
                           method, exc_info=True)  # fmt: skip
        self._on_error(code)
        await context.abort(code, message)

    def _unary(self, inner: Callable, parse: Callable[[bytes], Any] | None, method: str) -> Callable:
        async def guarded(raw: bytes, context: grpc.aio.ServicerContext) -> Any:
            try:
                return await inner(self._parse(raw, parse, method), context)
            except asyncio.CancelledError:
                raise  # the client went away; nothing to answer
            except Exception as exc:
                await self._answer(exc, context, method)

        return guarded

    async def _parsed(
        self, raw: bytes, parse: Callable[[bytes], Any] | None, method: str, context: grpc.aio.ServicerContext
    ) -> Any:
        """The request, or the call aborted with INVALID_ARGUMENT (for handlers that stream answers)."""
        try:
            return self._parse(raw, parse, method)
        except InvalidInput as exc:
            await self._answer(exc, context, method)

    def _unary_stream(self, inner: Callable, parse: Callable[[bytes], Any] | None, method: str) -> Callable:
        if inspect.isasyncgenfunction(inner):

            async def generating(raw: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                request = await self._parsed(raw, parse, method, context)
                async for response in inner(request, context):
                    yield response

            return generating

        async def writing(raw: bytes, context: grpc.aio.ServicerContext) -> Any:  # answers with context.write
            return await inner(await self._parsed(raw, parse, method, context), context)

        return writing

    def _stream(
        self, inner: Callable, parse: Callable[[bytes], Any] | None, method: str, streams_out: bool
    ) -> Callable:
        def checked(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
            async def gen() -> AsyncIterator[Any]:
                async for r in requests:
                    if isinstance(r, _Undecodable):
                        raise self._undecodable(r.error, parse, method)
                    yield r

            return gen()

        if streams_out:

            async def bidi(
                requests: AsyncIterator[Any], context: grpc.aio.ServicerContext
            ) -> AsyncIterator[Any]:
                try:
                    async for response in inner(checked(requests), context):
                        yield response
                except InvalidInput as exc:
                    await self._answer(exc, context, method)

            return bidi

        async def client_stream(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext) -> Any:
            try:
                return await inner(checked(requests), context)
            except InvalidInput as exc:
                await self._answer(exc, context, method)

        return client_stream
