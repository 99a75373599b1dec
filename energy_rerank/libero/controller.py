"""A LIBERO controller whose every chunk comes from a running energy-rerank server.

`ServedController` is a `chunk_fn` for `runner.run_episode`: it hands the runner one action per
call from the client's `ChunkBroker`, which asks the server (SelectAction) for a new chunk when
the current one is used up (or earlier, with prefetch). Each call gets a fresh observation, so
the broker always plans from the newest one. Every request's client-observed round trip and the
server's own timing are kept for the latency report.

A `chooser` replaces the server's pick with the client's own among the same N candidates
(SelectAction with return_candidates): a uniform random one, or the one nearest the scripted
expert's label (`libero.selectors`), on every request or (returning None) only on some. The server still builds, bounds and checks every candidate,
so the chunk executed is always one the server would have returned.

The client is passed in (anything with RerankClient's `select` and `info`), so this module
imports no gRPC itself; `energy_rerank_client` is only needed for its broker.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from energy_rerank.policy.base import Observation

# (candidates [N, H, A] robot units as the server returned them, the request's seed) -> chosen
# index, or None for the server's own pick
Chooser = Callable[[np.ndarray, int], int | None]


@dataclass(frozen=True)
class ControllerConfig:
    """How each chunk is asked for."""

    num_candidates: int = 1  # N per SelectAction; 1 = the base policy's own chunk (no reranking)
    prefetch_fraction: float = 0.0  # request the next chunk when this share is left (0 = at the end)
    sigma_scale: float = 1.0  # multiplies the server sampler's noise sigmas
    seed: int = 0  # request seeds derive from (seed, episode key, request index): runs are repeatable
    switch_margin: float | None = None  # energy gain needed to leave the policy's chunk; None = the server's
    timeout: float = 30.0  # seconds per SelectAction (retries included); generous for a loaded 2-core CPU


@dataclass
class RequestLog:
    """Per-request measurements of one controller, appended as the episode runs."""

    client_seconds: list[float] = field(default_factory=list)  # round trip seen by the client
    server_seconds: list[float] = field(default_factory=list)  # Timing.total on the server
    inference_seconds: list[float] = field(default_factory=list)  # Timing.inference (policy + rerank)
    chosen: list[int] = field(default_factory=list)  # chosen candidate; 0 = the policy's own chunk
    fallbacks: int = 0  # answers where scoring failed and the server returned the policy's chunk


class ServedController:
    """chunk_fn(observation) -> [1, 7]: one action per control step, chunks from the server."""

    def __init__(
        self, client: Any, config: ControllerConfig, episode_key: str = "", chooser: Chooser | None = None
    ) -> None:
        from energy_rerank_client.broker import ChunkBroker  # the light client's broker

        info = client.info()
        self.client, self.config, self.chooser = client, config, chooser
        self.cameras: tuple[str, ...] = tuple(info.cameras)
        self.state_dim, self.lowdim_dim = int(info.state_dim), int(info.lowdim_dim)
        self.log = RequestLog()
        self.frames: list[np.ndarray] = []  # agentview frames [h, w, 3], only if record_frames
        self.record_frames = False
        self._seed_base = zlib.crc32(f"{config.seed}/{episode_key}".encode())
        self.broker = ChunkBroker(self._request, prefetch_fraction=config.prefetch_fraction)

    def __call__(self, obs: Observation) -> np.ndarray:
        if self.record_frames and "agentview" in obs.images:
            self.frames.append(obs.images["agentview"][::-1].copy())  # robosuite renders upside down
        return np.asarray(self.broker.act(obs), np.float32)[None]  # [1, A]

    def _request(self, obs: Observation) -> np.ndarray:
        kwargs = self._select_kwargs(obs)
        if self.config.switch_margin is not None:
            kwargs["switch_margin"] = self.config.switch_margin
        if self.chooser is not None:
            kwargs["return_candidates"] = True
        seed = (self._seed_base + len(self.log.client_seconds)) % 2**31
        t0 = time.perf_counter()
        r = self.client.select(
            **kwargs,
            num_candidates=self.config.num_candidates,
            sigma_scale=self.config.sigma_scale,
            seed=seed,
            timeout=self.config.timeout,
        )
        self.log.client_seconds.append(time.perf_counter() - t0)
        self.log.server_seconds.append(r.timing.get("total", float("nan")))
        self.log.inference_seconds.append(r.timing.get("inference", float("nan")))
        self.log.fallbacks += int(r.fallback)
        if self.chooser is None or r.candidates is None:  # withheld (non-finite ones): the server's pick
            self.log.chosen.append(r.index)
            return r.chunk  # [H, A]
        index = self.chooser(r.candidates, seed)
        if index is None:  # the chooser leaves this one to the server
            self.log.chosen.append(r.index)
            return r.chunk  # [H, A]
        self.log.chosen.append(index)
        return r.candidates[index]  # [H, A]

    def _select_kwargs(self, obs: Observation) -> dict[str, Any]:
        """Send only what the served policy reads; a width mismatch is a setup error, named here."""
        kwargs: dict[str, Any] = {"instruction": obs.instruction}
        for name, have, want in (
            ("state", obs.state, self.state_dim),
            ("lowdim", obs.lowdim, self.lowdim_dim),
        ):
            if not want:
                continue
            if have is None or have.shape != (want,):
                got = None if have is None else have.shape
                raise ValueError(f"served policy reads {name} [{want}], the simulator gives {got}")
            kwargs[name] = have
        if self.cameras:
            missing = [c for c in self.cameras if c not in obs.images]
            if missing:
                raise ValueError(
                    f"served policy reads cameras {list(self.cameras)}; the simulator renders "
                    f"{sorted(obs.images)} (build the sim with image_size > 0)"
                )
            kwargs["images"] = {c: obs.images[c] for c in self.cameras}
        return kwargs

    def close(self) -> None:
        self.broker.close()
