"""Dynamic batching in the style of Triton's `max_queue_delay_microseconds`.

Requests wait in one queue; a single loop on the event loop takes up to `max_batch` of them and
runs the model on ONE worker thread, so the event loop keeps accepting requests while the
model runs. Every model call goes through this queue: SelectAction requests are batched,
other calls (ScoreCandidates, a hot swap's warm-up) run alone in their turn (`call`), under the
same queue limit and deadline rule. With the default delay of 0 a batch never waits for company: it takes whatever
queued up while the previous batch ran, which is exactly when batching pays. A full queue is
refused at once (`Overloaded` -> RESOURCE_EXHAUSTED) rather than growing latency unboundedly.

Deadlines: a request whose deadline passed while queued is answered `DeadlineExpired` and
never reaches the model; a request whose caller went away (cancelled) is dropped the same way.

A batch's inputs (decoded images) are released as soon as it has run: nothing here keeps a
reference to a finished batch, so a burst of large requests does not stay in memory.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, cast

from energy_rerank.server.errors import DeadlineExpired, LogThrottle, Overloaded, Unavailable
from energy_rerank.server.metrics import Metrics

log = logging.getLogger(__name__)
throttled = LogThrottle(log)  # a client can make batches fail at will (an input the policy overflows on)

P = TypeVar("P")  # one request's payload
R = TypeVar("R")  # one request's result
T = TypeVar("T")


@dataclass(frozen=True)
class BatchConfig:
    max_batch: int = 16  # most requests handed to the model in one call
    max_delay_us: int = 0  # how long the first request of a batch may wait for more (0 = never)
    queue_limit: int = 256  # waiting requests beyond which new ones get RESOURCE_EXHAUSTED

    def __post_init__(self) -> None:
        if self.max_batch < 1 or self.max_delay_us < 0 or self.queue_limit < 1:
            raise ValueError(f"need max_batch >= 1, max_delay_us >= 0, queue_limit >= 1; got {self}")


@dataclass
class Batched(Generic[R]):
    """One request's result and how it was batched."""

    result: R
    queue_seconds: float  # enqueue -> its batch started
    batch_size: int  # requests in its batch


@dataclass
class _Pending(Generic[P]):
    payload: P | None  # a request to batch, or None for a call
    call: Callable[[], Any] | None  # a call run alone in its turn (ScoreCandidates, warm-up), or None
    future: asyncio.Future
    enqueued: float  # time.perf_counter()
    deadline: float | None  # time.perf_counter() after which the answer is useless


class Batcher(Generic[P, R]):
    def __init__(
        self,
        run_batch: Callable[[list[P]], list[R]],
        config: BatchConfig = BatchConfig(),
        metrics: Metrics | None = None,
    ) -> None:
        self.run_batch = run_batch  # called on the worker thread; replaceable (hot swap)
        self.config = config
        self.metrics = metrics
        self._queue: deque[_Pending[P]] = deque()
        self._wakeup = asyncio.Event()
        # One thread: batches and calls never run the model concurrently.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference")
        self._task: asyncio.Task | None = None
        self._closed = False

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="batcher")

    @property
    def depth(self) -> int:
        return len(self._queue)

    async def submit(self, payload: P, timeout: float | None = None) -> Batched[R]:
        """Queue one request and wait for its result. `timeout` = seconds left before its deadline."""
        return await self._enqueue(payload, None, timeout)

    async def call(self, fn: Callable[[], T], timeout: float | None = None) -> Batched[T]:
        """Queue `fn()` to run alone on the inference thread in its turn, between batches, under
        the same queue limit and deadline as requests (ScoreCandidates, a hot swap's warm-up)."""
        return await self._enqueue(None, fn, timeout)

    async def _enqueue(self, payload: P | None, fn: Callable[[], Any] | None, timeout: float | None) -> Any:
        if self._closed:
            raise Unavailable("server is shutting down")
        if len(self._queue) >= self.config.queue_limit:
            raise Overloaded(f"queue full ({self.config.queue_limit} requests waiting); retry later")
        now = time.perf_counter()
        fut: asyncio.Future = asyncio.get_running_loop().create_future()
        self._queue.append(_Pending(payload, fn, fut, now, None if timeout is None else now + timeout))
        self._set_depth()
        self._wakeup.set()
        try:
            return await fut
        except asyncio.CancelledError:
            fut.cancel()  # the batch loop skips it: its work is dropped
            raise

    async def close(self) -> None:
        """Refuse new work, fail what is still queued, stop the loop and the worker thread."""
        self._closed = True
        while self._queue:
            p = self._queue.popleft()
            if not p.future.done():
                p.future.set_exception(Unavailable("server is shutting down"))
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await asyncio.get_running_loop().run_in_executor(None, self._executor.shutdown)

    # ------------------------------------------------------------------ internals
    async def _loop(self) -> None:
        while True:
            while not self._queue:
                self._wakeup.clear()
                await self._wakeup.wait()
            await self._gather_more()
            batch = self._take()
            if batch:
                await self._run(batch)
            del batch  # its inputs must not outlive it while the loop waits for the next request

    async def _run(self, batch: list[_Pending[P]]) -> None:
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        call = batch[0].call
        results: list[Any]
        if call is not None:  # a call runs alone
            results = [await loop.run_in_executor(self._executor, _run_call, call)]
        else:
            if self.metrics is not None:
                self.metrics.batch_size.observe(len(batch))
            payloads = cast(list[P], [p.payload for p in batch])  # requests only: no call is batched
            results = await loop.run_in_executor(self._executor, self._run_isolated, payloads)
        for p, r in zip(batch, results, strict=True):
            if p.future.done():
                continue
            if isinstance(r, BaseException):
                p.future.set_exception(r)
            else:
                p.future.set_result(Batched(r, started - p.enqueued, len(batch)))

    async def _gather_more(self) -> None:
        """With a delay configured, wait (from the oldest arrival) until full or the delay is over.
        A call at the head runs at once: it is never batched, so waiting would gain nothing."""
        if not self.config.max_delay_us or self._queue[0].call is not None:
            return
        until = self._queue[0].enqueued + self.config.max_delay_us * 1e-6
        while len(self._queue) < self.config.max_batch and (left := until - time.perf_counter()) > 0:
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), left)
            except asyncio.TimeoutError:
                break

    def _take(self) -> list[_Pending[P]]:
        """The next batch in queue order: one call alone, or up to max_batch requests (stopping at
        a call, which keeps its place). Entries whose caller left or whose deadline passed are dropped."""
        batch: list[_Pending[P]] = []
        now = time.perf_counter()
        while self._queue and len(batch) < self.config.max_batch:
            p = self._queue[0]
            if self._dropped(p, now):
                self._queue.popleft()
                continue
            if p.call is not None and batch:
                break
            batch.append(self._queue.popleft())
            if p.call is not None:
                break
        self._set_depth()
        return batch

    def _dropped(self, p: _Pending[P], now: float) -> bool:
        if p.future.done():
            # Its caller went away. gRPC cancels a call whose client deadline passed: count
            # that as a deadline, so the metric says why work was dropped.
            expired = p.deadline is not None and now >= p.deadline
            self._count_dropped("deadline" if expired else "cancelled")
            return True
        if p.deadline is not None and now >= p.deadline:
            p.future.set_exception(
                DeadlineExpired(f"deadline passed after {now - p.enqueued:.4f} s in the queue")
            )
            self._count_dropped("deadline")
            return True
        return False

    def _run_isolated(self, payloads: list[P]) -> list[R | BaseException]:
        """Run a batch; if it fails, rerun its requests one by one so one bad request fails alone."""
        try:
            out: list[R | BaseException] = list(self.run_batch(payloads))
            if len(out) != len(payloads):
                raise RuntimeError(f"run_batch returned {len(out)} results for {len(payloads)} requests")
            return out
        except Exception as e:
            if len(payloads) == 1:
                return [e]
            throttled(logging.WARNING, "batch failed", "batch of %d failed (%s: %s); retrying one by one",
                      len(payloads), type(e).__name__, e)  # fmt: skip
            return [self._run_isolated([p])[0] for p in payloads]

    def _count_dropped(self, reason: str) -> None:
        if self.metrics is not None:
            self.metrics.dropped.labels(reason=reason).inc()

    def _set_depth(self) -> None:
        if self.metrics is not None:
            self.metrics.queue_depth.set(len(self._queue))


def _run_call(fn: Callable[[], T]) -> T | BaseException:
    """A call's result, or its exception handed back as a value like a failed request's."""
    try:
        return fn()
    except Exception as e:
        return e
