"""RerankService: translate protobuf <-> core types and delegate to the core `Reranker`.

No model logic lives here. Errors are raised, never aborted on: `errors.ErrorInterceptor` maps
them to status codes. Inference runs on the batcher's worker thread, never on the event loop.
"""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import numpy as np

from energy_rerank.evaluation.margin import SwitchExpectation, expectation_for
from energy_rerank.policy.base import Observation
from energy_rerank.reranker import Reranker, Selection, SelectParams
from energy_rerank.server import codec
from energy_rerank.server._proto import rerank_pb2 as pb
from energy_rerank.server._proto import rerank_pb2_grpc
from energy_rerank.server.batcher import Batcher
from energy_rerank.server.config import ServerConfig
from energy_rerank.server.metrics import Metrics
from energy_rerank.server.switch_watch import SwitchWatch, switch_watch_for

Item = tuple[Observation, SelectParams]


class RerankServicer(rerank_pb2_grpc.RerankServiceServicer):
    def __init__(self, reranker: Reranker, config: ServerConfig, metrics: Metrics) -> None:
        self.config = config
        self.metrics = metrics
        self.batcher: Batcher[Item, tuple[Selection, str]] = Batcher(self.select_batch, config.batch, metrics)
        self.use(reranker, config.energy_path)

    def use(self, reranker: Reranker, energy_path: str | Path) -> None:
        """Serve this reranker from the next batch on (start-up, and hot swaps: admin.py). A head
        whose selection.json cannot be read raises before anything changes."""
        # The head's held-out switch rates at the margin served (None: unrecorded, or another margin)
        rates = expectation_for(energy_path, reranker.switch_margin)
        self.switch_rates: SwitchExpectation | None = rates
        self.switch_watch: SwitchWatch | None = switch_watch_for(
            rates, reranker, self.config.switch_watch, self.metrics
        )
        self.reranker = reranker  # read at every batch: replacing it swaps models between batches

    def select_batch(self, items: list[Item]) -> list[tuple[Selection, str]]:
        """Runs on the inference thread. Each answer carries the version of the models that made it."""
        r = self.reranker
        return [(s, r.model_version) for s in r.select([o for o, _ in items], [p for _, p in items])]

    async def SelectAction(self, request: pb.SelectActionRequest, context: grpc.aio.ServicerContext):
        t0 = time.perf_counter()
        r = self.reranker
        obs = codec.decode_observation(request.observation, r.proposer.description)
        params = codec.decode_params(request.params, self.config.default_candidates, r.max_candidates)
        t1 = time.perf_counter()
        with self.metrics.inflight.track_inprogress():
            done = await self.batcher.submit((obs, params), context.time_remaining())
        s, version = done.result
        timing = {"validation": t1 - t0, "queue": done.queue_seconds, **s.timing}
        timing["inference"] = timing.pop("total")
        timing["total"] = time.perf_counter() - t0
        self.metrics.observe_stages("SelectAction", timing)
        self.metrics.observe_energies(s.energies.tolist())
        self.metrics.requests.labels(method="SelectAction").inc()
        if s.fallback:
            self.metrics.fallbacks.inc()
        if s.index != 0:
            self.metrics.switched.inc()
        if self.switch_watch is not None:
            self.switch_watch.observe(version, params, s)
        return codec.encode_selection(s, version, timing, done.batch_size)

    async def ScoreCandidates(self, request: pb.ScoreCandidatesRequest, context: grpc.aio.ServicerContext):
        t0 = time.perf_counter()
        reranker = self.reranker
        hidden, valid, candidates = codec.decode_score_request(
            request, reranker.proposer.description, reranker.max_candidates
        )
        t1 = time.perf_counter()

        def score() -> tuple[np.ndarray, float]:
            t = time.perf_counter()
            energies = reranker.score_candidates(hidden, valid, candidates, normalized=request.normalized)
            return energies.numpy().astype(np.float32), t  # [B, N]

        energies, t2 = await self.batcher.call(score)
        t3 = time.perf_counter()
        timing = {"validation": t1 - t0, "queue": t2 - t1, "score": t3 - t2, "total": t3 - t0}
        self.metrics.observe_stages("ScoreCandidates", timing)
        self.metrics.requests.labels(method="ScoreCandidates").inc()
        return pb.ScoreCandidatesResponse(
            energies=codec.encode_energies(energies),
            argmin=energies.argmin(axis=1).tolist(),
            model_version=reranker.model_version,
            timing=codec.encode_timing(timing),
        )

    async def GetModelInfo(self, request: pb.GetModelInfoRequest, context: grpc.aio.ServicerContext):
        self.metrics.requests.labels(method="GetModelInfo").inc()
        return codec.encode_model_info(
            self.reranker, self.config.default_candidates, self.config.batch.max_batch, self.switch_rates
        )
