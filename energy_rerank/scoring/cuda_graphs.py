"""Capture a whole scoring call in a CUDA graph per (B bucket, N bucket, S, H) and replay it.

Eager scoring of this head is bound by kernel launches (on the H100, ~1 ms eager for ~0.04 ms
of work at B = 8 x N = 64); a replayed graph issues all of a call's launches at once. Shapes are
rounded up to buckets so that a handful of graphs serve every request: the real inputs are copied
into the front of static buffers and the energies sliced back out; shapes above the largest
bucket are scored eagerly. Padding never changes real outputs: every context and every candidate
is scored independently. Padded contexts keep valid = True, so their (discarded) energies stay
finite.

Copying the inputs in costs time against a 0.10 ms budget for the whole call: the hidden states
are 19.6 MB at B = 8, S = 300, D_h = 4096 in bf16 (18 us on the H100), and each copy is a host
launch the GPU waits for. A plan whose launches can read the inputs by address
(TritonScorer.addressable_plans, kernels/input_address.py) is captured reading through a [3] int64
device buffer; a call whose B and N fill the bucket only writes its tensors' addresses there
(one 24-byte copy from pinned memory, skipped when they repeat) and the graph reads the
caller's tensors in place. Other calls, and other plans, copy into the static buffers.

Any scorer whose `score` does no host synchronisation can be wrapped (TritonScorer, TorchScorer).
Autotuning runs during the warm-up before capture, never inside it. A scorer that offers several
plans for the same energies (TritonScorer's `plans`: fused chains or one launch per layer) gets
each captured and its replays timed, and the fastest kept per bucket (`plan_times` records them):
which plan wins depends on the GPU and the shape, and measuring once at capture beats guessing.
Each plan is timed with its input staging (the copies, or the address write) included.
"""

from __future__ import annotations

import bisect
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from energy_rerank.scoring.protocol import Scorer

log = logging.getLogger(__name__)

DEFAULT_B_BUCKETS = (1, 2, 4, 8, 16, 32)
DEFAULT_N_BUCKETS = (1, 4, 8, 16, 32, 64, 128, 256)


@dataclass
class _Graph:
    graph: torch.cuda.CUDAGraph
    hidden: torch.Tensor  # [Bb, S, D] static input
    valid: torch.Tensor  # [Bb, S] bool static input
    candidates: torch.Tensor  # [Bb, Nb, H, A] static input
    energies: torch.Tensor  # [Bb, Nb] static output
    plan: str | None = None  # the inner scorer's plan captured in this graph (None: it has one)
    # Addressable plans (TritonScorer.addressable_plans): the graph reads its three inputs at the
    # addresses held here, and `pointers` computes them for a set of inputs (input_pointers).
    address: torch.Tensor | None = None  # [3] int64 on the device: hidden, valid, candidates
    pointers: Callable[..., tuple[int, ...]] | None = None
    staged: torch.Tensor | None = None  # [3] int64 pinned host copy of `address`, the source of its writes
    staged_np: np.ndarray | None = None  # `staged` as numpy: the cheapest way to write three ints into it
    written: torch.cuda.Event | None = None  # after the last write: `staged` is free to change again
    pointed_at: tuple[int, ...] = ()  # the addresses last written (a repeat needs no write)

    def stage(self, hidden: torch.Tensor, valid: torch.Tensor, candidates: torch.Tensor) -> None:
        """Make the next replay read these inputs [b, S, D], [b, S], [b, n, H, A]: in place when the
        graph reads by address and each is laid out like its static buffer (B and N fill the
        bucket), else copied into the buffers' fronts."""
        if self.address is not None and self._fits(hidden, valid, candidates):
            self._point_at(self.pointers(hidden, valid, candidates))  # type: ignore[misc]
            return
        b, n = candidates.shape[:2]
        self.hidden[:b].copy_(hidden, non_blocking=True)
        self.valid[:b].copy_(valid, non_blocking=True)
        self.candidates[:b, :n].copy_(candidates, non_blocking=True)
        if self.address is not None:
            self._point_at(self.pointers(self.hidden, self.valid, self.candidates))  # type: ignore[misc]

    def _fits(self, hidden: torch.Tensor, valid: torch.Tensor, candidates: torch.Tensor) -> bool:
        """Laid out like the static buffers, on their device, and hidden 16-byte aligned (its
        kernels read the address with that alignment promised). Spelled out: this runs per call."""
        dev = self.hidden.get_device()
        return (
            hidden.data_ptr() % 16 == 0
            and hidden.shape == self.hidden.shape and valid.shape == self.valid.shape
            and candidates.shape == self.candidates.shape
            and hidden.dtype == self.hidden.dtype and valid.dtype == self.valid.dtype
            and candidates.dtype == self.candidates.dtype
            and hidden.get_device() == dev and valid.get_device() == dev and candidates.get_device() == dev
            and hidden.is_contiguous() and valid.is_contiguous() and candidates.is_contiguous()
        )  # fmt: skip

    def _point_at(self, pointers: tuple[int, ...]) -> None:
        if pointers == self.pointed_at:
            return
        self.written.synchronize()  # type: ignore[union-attr]  # the previous write has read `staged` (long since)
        self.staged_np[:] = pointers  # type: ignore[index]
        self.address.copy_(self.staged, non_blocking=True)  # type: ignore[union-attr,arg-type]  # one 24-byte copy, stream-ordered
        self.written.record()  # type: ignore[union-attr]
        self.pointed_at = pointers


def bucket(value: int, buckets: tuple[int, ...]) -> int | None:
    """Smallest bucket >= value, or None when value is above them all."""
    i = bisect.bisect_left(buckets, value)
    return buckets[i] if i < len(buckets) else None


class GraphedScorer:
    """Scorer protocol: replays one captured CUDA graph per shape bucket (captured on first use)."""

    def __init__(
        self,
        scorer: Scorer,
        b_buckets: tuple[int, ...] = DEFAULT_B_BUCKETS,
        n_buckets: tuple[int, ...] = DEFAULT_N_BUCKETS,
        warmup: int = 2,  # eager calls before capture (autotuning, lazy init)
    ) -> None:
        if not torch.cuda.is_available():
            raise RuntimeError("CUDA graphs need a CUDA device")
        self.inner = scorer
        self.name = f"{scorer.name}+graph"
        self.b_buckets = tuple(sorted(b_buckets))
        self.n_buckets = tuple(sorted(n_buckets))
        self.warmup = warmup
        self.device = torch.device(getattr(scorer, "device", "cuda"))
        self.pool = torch.cuda.graph_pool_handle()  # one memory pool shared by every bucket's graph
        self.graphs: dict[tuple, _Graph] = {}
        self.eager_shapes: set[tuple[int, int]] = set()  # shapes above the buckets, warned about once
        self.plan_times: dict[tuple, dict[str, float]] = {}  # bucket key -> plan -> median replay ms
        # (input shapes and dtypes) -> its bucket's graph: a call's lookup is one hash
        self._by_shape: dict[tuple, _Graph] = {}

    def _capture(self, key: tuple, like: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> _Graph:
        plans = tuple(getattr(self.inner, "plans", ()))
        if len(plans) < 2:
            return self._capture_plan(key, like, getattr(self.inner, "plan", None))
        graphs = {}
        for plan in plans:
            if plan not in self.inner.plans:  # type: ignore[attr-defined]
                continue  # dropped by the scorer after it failed (TritonScorer.score)
            self.inner.plan = plan  # type: ignore[attr-defined]
            g = self._capture_plan(key, like, plan)
            if plan in self.inner.plans:  # type: ignore[attr-defined]
                graphs[plan] = g  # else it failed in the warm-up and the graph holds the fallback
        # Timed with input staging: a fresh tensor each replay, so address plans pay their write
        # and the others their copy, as a caller's stream of new observations would.
        g0 = next(iter(graphs.values()))
        fresh = [(torch.randn_like(g0.hidden), g0.valid.clone(), g0.candidates.clone()) for _ in range(2)]
        times = self.plan_times[key] = {plan: _median_replay_ms(g, fresh) for plan, g in graphs.items()}
        del fresh
        best = min(times, key=times.__getitem__)
        self.inner.plan = best  # type: ignore[attr-defined]  # eager calls follow the latest choice
        log.info("B=%d N=%d S=%d H=%d: plan %s (%s)", *key[:4], best,
                 ", ".join(f"{p} {t:.4f} ms" for p, t in times.items()))
        return graphs[best]

    def _capture_plan(self, key: tuple, like: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
                      plan: str | None = None) -> _Graph:
        bb, nb, s, h = key[:4]
        hidden, _, candidates = like
        dev = self.device
        static_h = torch.zeros(bb, s, hidden.shape[-1], dtype=hidden.dtype, device=dev)
        static_v = torch.ones(bb, s, dtype=torch.bool, device=dev)
        static_c = torch.zeros(bb, nb, h, candidates.shape[-1], dtype=candidates.dtype, device=dev)
        by_address = plan in getattr(self.inner, "addressable_plans", ())
        pointers = self.inner.input_pointers if by_address else None  # type: ignore[attr-defined]
        address = torch.tensor(pointers(static_h, static_v, static_c), device=dev) if pointers else None
        side = torch.cuda.Stream(device=dev)
        side.wait_stream(torch.cuda.current_stream(dev))
        try:
            if by_address:
                self.inner.input_addresses = address  # type: ignore[attr-defined]
            with torch.cuda.stream(side):
                for _ in range(self.warmup):
                    self.inner.score(static_h, static_v, static_c)
            torch.cuda.current_stream(dev).wait_stream(side)
            if by_address and self.inner.plan != plan:  # type: ignore[attr-defined]
                address = None  # the plan failed in the warm-up; the fallback reads the buffers
                self.inner.input_addresses = None  # type: ignore[attr-defined]
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self.pool):
                out = self.inner.score(static_h, static_v, static_c)
        finally:
            if by_address:
                self.inner.input_addresses = None  # type: ignore[attr-defined]  # eager calls read what they are given
        g = _Graph(graph, static_h, static_v, static_c, out, plan)
        if address is not None:
            g.address, g.pointers = address, pointers
            g.staged = torch.empty(3, dtype=torch.int64, pin_memory=True)
            g.staged_np = g.staged.numpy()
            g.written = torch.cuda.Event()
            g.written.record()
            g.pointed_at = pointers(static_h, static_v, static_c)  # type: ignore[misc]
        return g

    def score(self, hidden: torch.Tensor, valid: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """hidden [B, S, D], valid [B, S] bool, candidates [B, N, H, A] -> energies [B, N] float32."""
        g = self._by_shape.get((hidden.shape, valid.shape, candidates.shape, hidden.dtype, valid.dtype, candidates.dtype))
        if g is None:
            return self._score_new_shape(hidden, valid, candidates)
        return self._replay(g, hidden, valid, candidates)

    def _replay(self, g: _Graph, hidden: torch.Tensor, valid: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        b, n = candidates.shape[:2]
        g.stage(hidden, valid, candidates)
        g.graph.replay()
        out = g.energies if (b, n) == g.energies.shape else g.energies[:b, :n]
        return out.clone()  # [B, N]; the static output is overwritten by the next replay

    def _score_new_shape(self, hidden: torch.Tensor, valid: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """A shape not seen yet: find (or capture) its bucket's graph, or score above the buckets eagerly."""
        if hidden.dim() != 3 or candidates.dim() != 4 or valid.shape != hidden.shape[:2] or valid.dtype != torch.bool:
            return self.inner.score(hidden, valid, candidates)  # which names the malformed input
        b, s, _ = hidden.shape
        _, n, h, _ = candidates.shape
        bb, nb = bucket(b, self.b_buckets), bucket(n, self.n_buckets)
        if bb is None or nb is None:
            # Larger than any bucket: eager is slower but right; failing would make the reranker
            # fall back to the base chunk on every such request.
            if (b, n) not in self.eager_shapes:
                self.eager_shapes.add((b, n))
                log.warning("B=%d N=%d is above the CUDA-graph buckets; scoring it eagerly", b, n)
            return self.inner.score(hidden, valid, candidates)
        key = (bb, nb, s, h, hidden.shape[-1], candidates.shape[-1], hidden.dtype, candidates.dtype)
        g = self.graphs.get(key)
        if g is None:
            g = self.graphs[key] = self._capture(key, (hidden, valid, candidates))
        self._by_shape[(hidden.shape, valid.shape, candidates.shape, hidden.dtype, valid.dtype, candidates.dtype)] = g
        return self._replay(g, hidden, valid, candidates)


def _median_replay_ms(g: _Graph, fresh: Sequence[tuple[torch.Tensor, ...]], warmup: int = 3, reps: int = 15) -> float:
    """Median GPU time of staging new inputs and one replay, from CUDA events (the comparison
    between a bucket's plans). `fresh`: full-bucket (hidden, valid, candidates) sets."""
    times = []
    for i in range(warmup + reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        g.stage(*fresh[i % len(fresh)])
        g.graph.replay()
        end.record()
        end.synchronize()
        if i >= warmup:
            times.append(start.elapsed_time(end))
    if g.address is not None:
        g._point_at(g.pointers(g.hidden, g.valid, g.candidates))  # type: ignore[misc]  # `fresh` is about to be freed
    return sorted(times)[len(times) // 2]
