"""CallGate: which model calls the server takes, how many are in flight, and when a drain is done.

gRPC's own graceful stop cancels every call it has received but not yet handed to a handler
(they end CANCELLED, grpc/grpc#41785): on a busy server that is most of the calls a client sent
just before SIGTERM. So the server drains in front of gRPC instead (RerankServer.drain):

1. health reports NOT_SERVING, so balancers and health-checking clients send elsewhere;
2. model calls (SelectAction, ScoreCandidates) that reach a handler within `accept_seconds`
   (ServerConfig.drain_accept_seconds) of the drain's start are still served: they were sent before the signal, or before any client
   could have seen it; later ones are refused UNAVAILABLE ("draining"), which clients retry on
   another replica;
3. once no call is in flight (or the grace is over), gRPC stops; calls still undispatched then
   arrived after the accept window and get CANCELLED, which clients retry too.

So every call sent before SIGTERM ends OK, as long as the event loop dispatches it within
`accept_seconds` (decoding runs off the loop for this reason) and the work in flight fits the grace.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import Gauge

from energy_rerank.server.errors import Unavailable


class CallGate:
    def __init__(self, inflight: Gauge) -> None:
        self.inflight_gauge = inflight  # the metric: decoding, queued or running
        self.inflight = 0  # model calls between admission and answer
        self._refuse_after: float | None = None  # time.monotonic() from which new calls are refused
        self._idle = asyncio.Event()
        self._idle.set()

    @contextmanager
    def admit(self) -> Iterator[None]:
        """Count one model call in flight for its whole handling; refused once the drain's accept
        window is over."""
        if self._refuse_after is not None and time.monotonic() >= self._refuse_after:
            raise Unavailable("server is draining; retry on another replica")
        self.inflight += 1
        self.inflight_gauge.inc()
        self._idle.clear()
        try:
            yield
        finally:
            self.inflight -= 1
            self.inflight_gauge.dec()
            if self.inflight == 0:
                self._idle.set()

    async def drain(self, grace: float, accept_seconds: float) -> bool:
        """Serve what arrives within `accept_seconds`, then refuse; wait until nothing is in flight.
        -> whether that happened within `grace` seconds."""
        deadline = time.monotonic() + grace
        accept = min(accept_seconds, grace)
        self._refuse_after = time.monotonic() + accept
        await asyncio.sleep(accept)
        try:
            await asyncio.wait_for(self._idle.wait(), max(0.0, deadline - time.monotonic()))
        except asyncio.TimeoutError:
            return False
        return True
