"""The dynamic batcher on its own, with a stand-in model that records what it was given."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from energy_rerank.server.batcher import BatchConfig, Batcher
from energy_rerank.server.errors import DeadlineExpired, Overloaded, Unavailable
from energy_rerank.server.metrics import Metrics


class Model:
    """Doubles each payload after `delay` seconds; raises on the payload "bad"."""

    def __init__(self, delay: float = 0.02) -> None:
        self.delay = delay
        self.batches: list[list] = []
        self.threads: set[str] = set()

    def __call__(self, payloads: list) -> list:
        self.batches.append(list(payloads))
        self.threads.add(threading.current_thread().name)
        time.sleep(self.delay)
        if "bad" in payloads:
            raise ValueError("bad payload")
        return [p * 2 for p in payloads]


def run(coro):
    return asyncio.run(coro)


async def with_batcher(model, config, body):
    b = Batcher(model, config, Metrics())
    b.start()
    try:
        return await body(b)
    finally:
        await b.close()


def test_concurrent_requests_are_batched_and_answered_individually():
    model = Model()

    async def body(b):
        return await asyncio.gather(*(b.submit(i) for i in range(16)))

    out = run(with_batcher(model, BatchConfig(max_batch=8), body))
    assert [o.result for o in out] == [2 * i for i in range(16)]
    assert max(len(x) for x in model.batches) > 1 and max(len(x) for x in model.batches) <= 8
    assert sum(len(x) for x in model.batches) == 16
    assert model.threads and not any(t == threading.main_thread().name for t in model.threads)
    assert {o.batch_size for o in out} == {len(x) for x in model.batches}


def test_event_loop_stays_responsive_while_model_runs():
    model = Model(delay=0.2)

    async def body(b):
        task = asyncio.create_task(b.submit(1))
        t0 = time.perf_counter()
        await asyncio.sleep(0.01)  # would take >= 0.2 s if the model blocked the loop
        lag = time.perf_counter() - t0
        await task
        return lag

    assert run(with_batcher(model, BatchConfig(), body)) < 0.1


def test_queue_limit_answers_overloaded():
    model = Model(delay=0.1)

    async def body(b):
        first = asyncio.create_task(b.submit(0))
        await asyncio.sleep(0.02)  # the first is running; the next two fill the queue
        queued = [asyncio.create_task(b.submit(i)) for i in (1, 2)]
        await asyncio.sleep(0)
        with pytest.raises(Overloaded, match="queue full"):
            await b.submit(3)
        return [r.result for r in await asyncio.gather(first, *queued)]

    assert run(with_batcher(model, BatchConfig(max_batch=1, queue_limit=2), body)) == [0, 2, 4]


def test_deadline_expired_in_queue_never_reaches_the_model():
    model = Model(delay=0.1)

    async def body(b):
        first = asyncio.create_task(b.submit(0))
        await asyncio.sleep(0.01)
        with pytest.raises(DeadlineExpired):
            await b.submit(1, timeout=0.02)  # expires while the first batch runs
        await first

    run(with_batcher(model, BatchConfig(max_batch=4), body))
    assert all(1 not in batch for batch in model.batches)


def test_cancelled_request_is_dropped():
    model = Model(delay=0.1)

    async def body(b):
        first = asyncio.create_task(b.submit(0))
        await asyncio.sleep(0.01)
        gone = asyncio.create_task(b.submit(1))
        await asyncio.sleep(0.01)
        gone.cancel()
        later = await b.submit(2)
        await first
        return later.result

    assert run(with_batcher(model, BatchConfig(max_batch=4), body)) == 4
    assert all(1 not in batch for batch in model.batches)


def test_max_delay_gathers_a_batch():
    model = Model(delay=0.0)

    async def body(b):
        tasks = []
        for i in range(4):
            tasks.append(asyncio.create_task(b.submit(i)))
            await asyncio.sleep(0.005)
        return await asyncio.gather(*tasks)

    out = run(with_batcher(model, BatchConfig(max_batch=4, max_delay_us=200_000), body))
    assert model.batches == [[0, 1, 2, 3]] and all(o.queue_seconds > 0 for o in out)


def test_one_bad_request_fails_alone():
    model = Model(delay=0.02)

    async def body(b):
        first = asyncio.create_task(b.submit(0))
        await asyncio.sleep(0.005)
        rest = [asyncio.create_task(b.submit(p)) for p in (1, "bad", 3)]
        return await asyncio.gather(first, *rest, return_exceptions=True)

    out = run(with_batcher(model, BatchConfig(max_batch=8), body))
    assert [o.result for o in (out[0], out[1], out[3])] == [0, 2, 6]
    assert isinstance(out[2], ValueError)


def test_close_fails_queued_and_refuses_new():
    model = Model(delay=0.1)

    async def body():
        b = Batcher(model, BatchConfig(max_batch=1), Metrics())
        b.start()
        first = asyncio.create_task(b.submit(0))
        await asyncio.sleep(0.01)
        queued = asyncio.create_task(b.submit(1))
        await asyncio.sleep(0)
        await b.close()
        with pytest.raises(Unavailable):
            await queued
        with pytest.raises(Unavailable):
            await b.submit(2)
        first.cancel()

    run(body())


def test_calls_wait_in_the_same_queue_and_run_alone_in_order():
    """A call (ScoreCandidates, warm-up) is queued behind the requests before it, never batched
    with them, and the requests after it wait for it: one queue, one order."""
    model = Model(delay=0.05)
    order: list[str] = []

    def call() -> str:
        order.append("call")
        assert threading.current_thread().name.startswith("inference")
        return "called"

    async def body(b):
        first = asyncio.create_task(b.submit(0))
        await asyncio.sleep(0.01)  # running: what follows queues up behind it
        before = [asyncio.create_task(b.submit(i)) for i in (1, 2)]
        await asyncio.sleep(0)
        called = asyncio.create_task(b.call(call))
        await asyncio.sleep(0)
        after = [asyncio.create_task(b.submit(i)) for i in (3, 4)]
        out = await asyncio.gather(first, *before, called, *after)
        return out

    out = run(with_batcher(model, BatchConfig(max_batch=8), body))
    assert [o.result for o in out] == [0, 2, 4, "called", 6, 8]
    assert model.batches == [[0], [1, 2], [3, 4]] and out[3].batch_size == 1


def test_calls_obey_the_queue_limit_and_deadlines():
    model = Model(delay=0.1)
    ran: list[int] = []

    async def body(b):
        first = asyncio.create_task(b.submit(0))
        await asyncio.sleep(0.02)
        queued = [asyncio.create_task(b.call(lambda: ran.append(1) or 1)) for _ in range(2)]
        await asyncio.sleep(0)
        with pytest.raises(Overloaded, match="queue full"):
            await b.call(lambda: ran.append(2))
        await asyncio.gather(first, *queued)
        busy = asyncio.create_task(b.submit(5))
        await asyncio.sleep(0.01)
        with pytest.raises(DeadlineExpired):
            await b.call(lambda: ran.append(3), timeout=0.02)  # expires while the batch runs
        await busy

    run(with_batcher(model, BatchConfig(max_batch=1, queue_limit=2), body))
    assert ran == [1, 1]  # neither the refused call nor the expired one ran


def test_a_failing_call_fails_alone():
    model = Model(delay=0.01)

    def broken() -> None:
        raise RuntimeError("scorer broke")

    async def body(b):
        return await asyncio.gather(b.call(broken), b.submit(1), return_exceptions=True)

    failed, ok = run(with_batcher(model, BatchConfig(), body))
    assert isinstance(failed, RuntimeError) and ok.result == 2


def test_a_finished_batch_is_not_kept_alive():
    """The batch loop holds no reference to a batch once it has run: large inputs (decoded
    images) are freed while the server waits for the next request."""
    import gc
    import weakref

    class Payload:
        pass

    def model(payloads: list) -> list:  # keeps nothing (Model records what it was given)
        return [1 for _ in payloads]

    refs: list[weakref.ref] = []

    async def body(b):
        p = Payload()
        refs.append(weakref.ref(p))
        await b.submit(p)
        del p
        await asyncio.sleep(0.05)  # the loop is idle, waiting for the next request
        gc.collect()
        return refs[0]() is None

    assert run(with_batcher(model, BatchConfig(), body))
