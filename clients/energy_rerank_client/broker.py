"""ChunkBroker: one action per control step from a server that answers with chunks.

A policy answers with a chunk of H actions; a control loop wants one action per tick. The
broker hands out the current chunk step by step and asks for the next one either when the
chunk is used up (prefetch_fraction = 0: simplest, but the loop waits one round trip every H
steps) or ahead of time, in a background thread, once only `prefetch_fraction` of the chunk
remains (the loop never waits if the round trip is shorter than those remaining steps).

A chunk fetched ahead of time was planned from an older observation: with skip_elapsed (the
default) the broker starts it at the step matching "now", skipping the steps that elapsed since
its observation was taken.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np


class ChunkBroker:
    def __init__(
        self,
        request: Callable[[Any], np.ndarray],
        prefetch_fraction: float = 0.0,
        skip_elapsed: bool = True,
    ) -> None:
        """request(observation) -> chunk [H, A]. prefetch_fraction in [0, 1)."""
        if not 0.0 <= prefetch_fraction < 1.0:
            raise ValueError(f"prefetch_fraction must be in [0, 1), got {prefetch_fraction}")
        self.request = request
        self.prefetch_fraction = prefetch_fraction
        self.skip_elapsed = skip_elapsed
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="chunk-broker")
        self.reset()

    @classmethod
    def for_client(cls, client: Any, prefetch_fraction: float = 0.0, **select_kwargs: Any) -> ChunkBroker:
        """Observations are dicts of RerankClient.select arguments (images, state, instruction, ...)."""
        return cls(lambda obs: client.select(**obs, **select_kwargs).chunk, prefetch_fraction)

    def reset(self) -> None:
        """Forget the current chunk (e.g. at an episode boundary)."""
        self._chunk: np.ndarray | None = None  # [H, A]
        self._pos = 0  # next step of _chunk to hand out
        self._pending: Future | None = None
        self._requested_at = 0  # tick at which _pending's observation was taken
        self.tick = 0  # actions handed out since reset
        self.requests = 0  # chunks requested
        self.waits = 0  # ticks on which the caller waited for a chunk

    def act(self, observation: Any) -> np.ndarray:
        """The action [A] for this control step."""
        if self._chunk is None or self._pos >= len(self._chunk):
            self._next_chunk(observation)
        assert self._chunk is not None
        action = self._chunk[self._pos]
        self._pos += 1
        self.tick += 1
        remaining = len(self._chunk) - self._pos
        if self._pending is None and 0 < remaining <= math.floor(self.prefetch_fraction * len(self._chunk)):
            self._pending = self._executor.submit(self.request, observation)
            self._requested_at, self.requests = self.tick, self.requests + 1
        return action

    def _next_chunk(self, observation: Any) -> None:
        if self._pending is None:
            self._pending = self._executor.submit(self.request, observation)
            self._requested_at, self.requests = self.tick, self.requests + 1
        if not self._pending.done():
            self.waits += 1
        pending, self._pending = self._pending, None  # a failed request is not retried forever
        chunk = np.asarray(pending.result())
        elapsed = self.tick - self._requested_at if self.skip_elapsed else 0
        self._chunk, self._pos = chunk, min(elapsed, len(chunk) - 1)

    def close(self) -> None:
        self._executor.shutdown(wait=True)

    def __enter__(self) -> ChunkBroker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
