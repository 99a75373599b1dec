"""The error mapping's helpers: bounded quotes of client input, bounded status messages, and a
log that says a client-triggered problem at most once per interval, with the count it skipped."""

from __future__ import annotations

import logging

import grpc

from energy_rerank.server.errors import (
    MESSAGE_CHARS,
    QUOTE_CHARS,
    InvalidInput,
    LogThrottle,
    clip,
    quote,
    status_of,
)


def test_quote_is_bounded_and_says_how_long_the_value_was():
    assert quote("float32") == "'float32'"
    assert quote([1, 2, 3]) == "[1, 2, 3]"
    long = quote("x" * 2**20)
    assert len(long) <= QUOTE_CHARS + 30 and long.startswith("'xxx") and "(1048578 chars)" in long
    shape = quote((7,) * 500_000)
    assert shape.startswith("[7, 7, 7") and "500000 items" in shape and len(shape) <= QUOTE_CHARS + 30


def test_status_messages_are_clipped():
    code, message = status_of(InvalidInput("observation.lowdim", "y" * 10_000))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and message.startswith("observation.lowdim: yyy")
    assert len(message) <= MESSAGE_CHARS and "(cut, 10020 chars)" in message
    assert clip("short") == "short"
    code, message = status_of(KeyError("internal detail"))
    assert code == grpc.StatusCode.INTERNAL and "internal detail" not in message


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_log_throttle_logs_once_per_interval_with_the_count(caplog, monkeypatch):
    clock = Clock()
    monkeypatch.setattr("energy_rerank.server.errors.time.monotonic", clock)
    throttle = LogThrottle(logging.getLogger("throttle-test"), interval=60)
    caplog.set_level(logging.WARNING, logger="throttle-test")
    logged = [throttle(logging.WARNING, "bad", "bad request %d", i) for i in range(500)]
    clock.now += 30
    logged.append(throttle(logging.WARNING, "other", "another kind"))  # kinds are throttled apart
    clock.now += 31
    logged.append(throttle(logging.WARNING, "bad", "bad request %d", 500))
    assert logged.count(True) == 3
    assert [r.getMessage() for r in caplog.records] == [
        "bad request 0",
        "another kind",
        "bad request 500 (and 499 more like it in the last 61 s)",
    ]
