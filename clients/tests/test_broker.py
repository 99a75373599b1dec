"""ChunkBroker: when it asks for chunks, which step it hands out, and that it never blocks
the loop when prefetching has enough time."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from energy_rerank_client import ChunkBroker

H = 8


class Chunks:
    """request(obs) -> chunk whose step h is [obs, h]: shows which observation and step were used."""

    def __init__(self, delay: float = 0.0) -> None:
        self.seen: list[int] = []
        self.delay = delay
        self.started = threading.Event()

    def __call__(self, obs: int) -> np.ndarray:
        self.seen.append(obs)
        self.started.set()
        time.sleep(self.delay)
        return np.stack([np.full(H, obs, np.float32), np.arange(H, dtype=np.float32)], axis=1)  # [H, 2]


def test_request_when_used_up():
    src = Chunks(delay=0.01)
    with ChunkBroker(src, prefetch_fraction=0.0) as b:
        actions = [b.act(t) for t in range(2 * H + 1)]
    assert src.seen == [0, H, 2 * H]  # a new observation every H ticks
    assert [a[1] for a in actions[:H]] == list(range(H)) and actions[H][0] == H and actions[H][1] == 0
    assert b.requests == 3 and b.waits == 3


def test_prefetch_ahead_and_skip_elapsed():
    src = Chunks()
    with ChunkBroker(src, prefetch_fraction=0.25) as b:  # ask when 2 of 8 steps remain
        actions = [b.act(t) for t in range(H + 1)]
    assert src.seen == [0, H - 3]  # requested at the tick that left 2 steps
    # the prefetched chunk starts 2 steps in: those steps elapsed since its observation
    assert actions[H][0] == H - 3 and actions[H][1] == 2


def test_prefetch_hides_latency():
    src = Chunks(delay=0.05)
    with ChunkBroker(src, prefetch_fraction=0.5) as b:
        b.act(0)  # first chunk: must wait
        for t in range(1, 3 * H):
            b.act(t)
            time.sleep(0.02)  # 4 remaining steps x 20 ms > 50 ms round trip
    assert b.waits == 1 and b.requests >= 3


def test_failed_request_is_raised_once_then_retried():
    calls = []

    def flaky(obs):
        calls.append(obs)
        if len(calls) == 1:
            raise ConnectionError("server down")
        return np.zeros((H, 2), np.float32)

    with ChunkBroker(flaky) as b:
        with pytest.raises(ConnectionError):
            b.act(0)
        assert b.act(1).shape == (2,)
    assert calls == [0, 1]


def test_bad_fraction():
    with pytest.raises(ValueError, match="prefetch_fraction"):
        ChunkBroker(Chunks(), prefetch_fraction=1.0)
