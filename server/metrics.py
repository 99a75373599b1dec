"""Prometheus metrics of the server, exported over HTTP on their own port.

Each server owns a `CollectorRegistry`, so several servers (tests, replicas in one process)
never share counters. Latency buckets are fitted to a robot's control budget: a 20-50 Hz
controller has 20-50 ms per step, so the buckets resolve 0.1 ms to 50 ms finely and only then
widen (the client library's defaults start at 5 ms, too coarse for this).

Requests, stage times and errors carry a `protocol` label: "grpc", or the front end that received
the request ("openpi" websocket, "oft" HTTP); everything else is about the one model they share.
"""

from __future__ import annotations

from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

NAMESPACE = "energy_rerank"
STAGES = ("validation", "queue", "policy", "candidates", "score", "inference", "total")
LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.005, 0.0075,
    0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5,
)  # fmt: skip
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 128)
CANDIDATE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
MARGIN_BUCKETS = (0.0, 1e-4, 1e-3, 3e-3, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r, ns = self.registry, NAMESPACE
        self.stage_seconds = Histogram(
            "stage_seconds", "Time spent per request in each stage (see Timing in the proto).",
            ["method", "stage", "protocol"], namespace=ns, buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.batch_size = Histogram(
            "batch_size", "Requests scored together in one reranker call.",
            namespace=ns, buckets=BATCH_BUCKETS, registry=r,
        )  # fmt: skip
        self.queue_depth = Gauge("queue_depth", "Requests waiting in the batcher.", namespace=ns, registry=r)
        self.inflight = Gauge("inflight", "Requests being handled (decoding, queued or running).",
                              namespace=ns, registry=r)  # fmt: skip
        self.candidates = Histogram(
            "candidates", "Candidates (N) ranked per request.",
            namespace=ns, buckets=CANDIDATE_BUCKETS, registry=r,
        )  # fmt: skip
        self.energy_margin = Histogram(
            "energy_margin", "Second-lowest minus lowest energy per request: how decisive the ranking was.",
            namespace=ns, buckets=MARGIN_BUCKETS, registry=r,
        )  # fmt: skip
        self.requests = Counter(
            "requests", "Answered requests by method and protocol.", ["method", "protocol"], namespace=ns, registry=r
        )
        self.fallbacks = Counter(
            "fallbacks", "Requests answered with the policy's own chunk because scoring failed.",
            namespace=ns, registry=r,
        )  # fmt: skip
        # switched / requests{method="SelectAction"} is the live switch rate. Compare it with the
        # calibration's switched@N in the head's selection.json: far above it, the robot is in states
        # the margin was not fitted on (LIBERO weak policy: 36% in closed loop vs 15% on demos).
        self.switched = Counter(
            "switched", "SelectAction answers that are not the policy's own chunk (chosen index != 0).",
            namespace=ns, registry=r,
        )  # fmt: skip
        # The same over the last --switch-watch-window comparable answers, and the rate the head's
        # calibration expects for them (server/switch_watch.py); NaN when the head has no calibration.
        self.switch_rate_live = Gauge(
            "switch_rate_live", "Share of recent comparable SelectAction answers that left the policy's chunk.",
            namespace=ns, registry=r,
        )  # fmt: skip
        self.switch_rate_expected = Gauge(
            "switch_rate_expected", "The head's calibrated switch rate for those same answers (selection.json).",
            namespace=ns, registry=r,
        )  # fmt: skip
        self.switch_rate_live.set(float("nan"))
        self.switch_rate_expected.set(float("nan"))
        self.errors = Counter("errors", "Requests answered with an error, by gRPC status code and protocol.",
                              ["code", "protocol"], namespace=ns, registry=r)  # fmt: skip
        self.dropped = Counter(
            "dropped", "Queued requests dropped before reaching the model, by reason (deadline, cancelled).",
            ["reason"], namespace=ns, registry=r,
        )  # fmt: skip
        self.reloads = Counter("reloads", "Energy-head hot swaps, by result (ok, error).", ["result"],
                               namespace=ns, registry=r)  # fmt: skip
        self._http: WSGIServer | None = None

    def observe_stages(self, method: str, seconds: dict[str, float], protocol: str = "grpc") -> None:
        for stage, s in seconds.items():
            self.stage_seconds.labels(method=method, stage=stage, protocol=protocol).observe(s)

    def count_request(self, method: str, protocol: str = "grpc") -> None:
        self.requests.labels(method=method, protocol=protocol).inc()

    def observe_energies(self, energies: list[float] | tuple[float, ...]) -> None:
        self.candidates.observe(len(energies))
        if len(energies) >= 2:
            lo, second = sorted(energies)[:2]
            self.energy_margin.observe(second - lo)

    def count_error(self, code: object, protocol: str = "grpc") -> None:
        self.errors.labels(code=getattr(code, "name", str(code)), protocol=protocol).inc()

    def serve(self, port: int, address: str = "127.0.0.1") -> int:
        """Start the HTTP exporter in a daemon thread; returns the bound port (port 0 = any free)."""
        self._http, _ = start_http_server(port, addr=address, registry=self.registry)
        return int(self._http.server_port)

    def close(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
