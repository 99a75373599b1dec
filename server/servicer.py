"""RerankService: translate protobuf <-> core types and delegate to the core `Reranker`.

No model logic lives here. Errors are raised, never aborted on: `errors.ErrorInterceptor` maps
them to status codes. Inference runs on the batcher's worker thread and image decoding on a
decode pool, never on the event loop, so health checks and small calls are answered meanwhile.
Every model call is admitted by the drain gate (drain.py) and queued in the one batcher.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import grpc
import numpy as np

from energy_rerank.checkpoint import SwitchExpectation
from energy_rerank.policy.base import Observation
from energy_rerank.reranker import PolicyFailure, Reranker, Selection, SelectParams
from energy_rerank.selection import choose
from energy_rerank.server import codec
from energy_rerank.server._proto import rerank_pb2 as pb
from energy_rerank.server._proto import rerank_pb2_grpc
from energy_rerank.server.batcher import Batcher
from energy_rerank.server.config import ServerConfig
from energy_rerank.server.drain import CallGate
from energy_rerank.server.images import PixelBudget, cameras_to_decode
from energy_rerank.server.metrics import Metrics
from energy_rerank.server.switch_watch import SwitchWatch, switch_watch_for

Item = tuple[Observation, SelectParams]


class Answer(NamedTuple):
    """One SelectAction's result, before any front end encodes it."""

    selection: Selection
    model_version: str  # of the models that made it
    timing: dict[str, float]  # seconds per stage (validation, queue, policy, ..., total)
    batch_size: int  # requests in its batch
DECODE_THREADS = 2  # images decoded at once (PIL releases the GIL while it inflates)


class RerankServicer(rerank_pb2_grpc.RerankServiceServicer):
    def __init__(self, reranker: Reranker, config: ServerConfig, metrics: Metrics) -> None:
        self.config = config
        self.metrics = metrics
        self.batcher: Batcher[Item, tuple[Selection, str]] = Batcher(self.select_batch, config.batch, metrics)
        self.gate = CallGate(metrics.inflight)
        self.pixels = PixelBudget(config.max_decoded_pixels)
        self._decoder = ThreadPoolExecutor(max_workers=DECODE_THREADS, thread_name_prefix="decode")
        self.use(reranker)

    def use(self, reranker: Reranker) -> None:
        """Serve this reranker from the next batch on (start-up, and hot swaps: admin.py); its
        switch-rate watch starts anew with the head's recorded rates."""
        # The head's held-out switch rates at the margin served (None: unrecorded, or another margin)
        rates = reranker.switch_rates
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
        return codec.encode_selection(*await self.select(request, context.time_remaining()))

    async def select(
        self,
        request: pb.SelectActionRequest,
        timeout: float | None,
        protocol: str = "grpc",
        received: float | None = None,
    ) -> Answer:
        """One SelectAction, whichever front end received it (gRPC, or openpi / OFT translated to
        the same request): drain gate, validation, pixel budget, the one batcher, metrics.
        `timeout`: seconds left before the caller's deadline; `received`: time.perf_counter() when
        the front end got the request, so its decoding counts as validation."""
        with self.gate.admit():
            t0 = time.perf_counter() if received is None else received
            r = self.reranker
            desc = r.proposer.description
            params = codec.decode_params(request.params, self.config.default_candidates, r.max_candidates)
            images = request.observation.images  # sizes from the headers: nothing decoded yet
            pixels = sum(
                cameras_to_decode(
                    images, desc.cameras, "observation.images", self.config.max_request_pixels
                ).values()
            )
            with self.pixels.hold(pixels):
                obs = await self._decode(request.observation, pixels)
                t1 = time.perf_counter()
                try:
                    done = await self.batcher.submit((obs, params), timeout)
                except PolicyFailure as e:
                    blame = codec.far_out_input(obs, desc, r.proposer.stats)
                    if blame is None:
                        raise
                    raise blame from e
                del obs  # decoded images: released with the pixels they hold
        s, version = done.result
        timing = {"validation": t1 - t0, "queue": done.queue_seconds, **s.timing}
        timing["inference"] = timing.pop("total")
        timing["total"] = time.perf_counter() - t0
        self.metrics.observe_stages("SelectAction", timing, protocol)
        self.metrics.observe_energies(s.energies.tolist())
        self.metrics.count_request("SelectAction", protocol)
        if s.fallback:
            self.metrics.fallbacks.inc()
        if s.index != 0:
            self.metrics.switched.inc()
        if self.switch_watch is not None:
            self.switch_watch.observe(version, params, s)
        return Answer(s, version, timing, done.batch_size)

    async def _decode(self, observation: pb.Observation, pixels: int) -> Observation:
        """Validate and decode; with images to decode, on the decode pool (the loop keeps answering)."""
        desc = self.reranker.proposer.description
        budget = self.config.max_request_pixels
        if not pixels:
            return codec.decode_observation(observation, desc, max_pixels=budget)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._decoder, lambda: codec.decode_observation(observation, desc, max_pixels=budget)
        )

    async def ScoreCandidates(self, request: pb.ScoreCandidatesRequest, context: grpc.aio.ServicerContext):
        with self.gate.admit():
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

            done = await self.batcher.call(score, context.time_remaining())  # the queue requests wait in
        energies, t2 = done.result
        t3 = time.perf_counter()
        timing = {"validation": t1 - t0, "queue": done.queue_seconds, "score": t3 - t2, "total": t3 - t0}
        self.metrics.observe_stages("ScoreCandidates", timing)
        self.metrics.count_request("ScoreCandidates")
        return pb.ScoreCandidatesResponse(
            energies=codec.encode_energies(energies),
            argmin=choose(energies).tolist(),  # the selection rule at margin 0: plain argmin
            model_version=reranker.model_version,
            timing=codec.encode_timing(timing),
        )

    async def GetModelInfo(self, request: pb.GetModelInfoRequest, context: grpc.aio.ServicerContext):
        self.metrics.count_request("GetModelInfo")
        return codec.encode_model_info(
            self.reranker, self.config.default_candidates, self.config.batch.max_batch, self.switch_rates
        )

    def close(self) -> None:
        """After the batcher closed: no decoding is left to do."""
        self._decoder.shutdown(wait=False, cancel_futures=True)
