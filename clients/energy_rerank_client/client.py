"""RerankClient (blocking) and AsyncRerankClient (asyncio): numpy in, numpy out.

Every call has a deadline (the `timeout` in seconds covers all attempts together) and is
retried with jittered exponential backoff while the server answers UNAVAILABLE (restarting,
draining, or a replica gone behind a round_robin target). SelectAction is safe to retry: it
changes nothing on the server. Other errors are raised at once as `grpc.RpcError`.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np

from energy_rerank_client._proto import rerank_pb2 as pb
from energy_rerank_client._proto import rerank_pb2_grpc
from energy_rerank_client.tensors import ImageLike, from_tensor, to_observation, to_tensor

RULES = {"argmin": pb.ARGMIN, "softmax": pb.SOFTMAX}

# A restarted server is found again within about a second (gRPC's default reconnect backoff grows
# to 120 s: far too long for a robot waiting on its next chunk).
RECONNECT_OPTIONS = (("grpc.initial_reconnect_backoff_ms", 100), ("grpc.max_reconnect_backoff_ms", 1000))


def replicas(
    addresses: Sequence[str], health_service: str = "energy_rerank.v1.RerankService"
) -> tuple[str, list[tuple[str, Any]]]:
    """Several replicas -> (target, options) for a client that spreads its calls over them
    round-robin and skips replicas whose health check is not SERVING (draining, loading).
    `addresses`: IP literals with ports ("10.0.0.5:50051", "[::1]:50051"), or one DNS target that
    resolves to every replica, e.g. a Kubernetes headless Service: ["dns:///rerank:50051"]."""
    if len(addresses) == 1 and ":///" in addresses[0]:
        target = addresses[0]
    else:
        families = {_ip_family(a) for a in addresses}
        if len(families) != 1:
            raise ValueError(
                f"replicas need IP literals of one family (or one dns:/// target), got {addresses}"
            )
        target = f"{families.pop()}:" + ",".join(addresses)
    config = {
        "loadBalancingConfig": [{"round_robin": {}}],
        "healthCheckConfig": {"serviceName": health_service},
    }
    return target, [("grpc.service_config", json.dumps(config))]


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 4  # tries in total, the first included
    initial_backoff: float = 0.05  # seconds before the first retry
    max_backoff: float = 1.0  # cap on one wait
    multiplier: float = 2.0  # growth of the wait per retry
    # Codes worth retrying. CANCELLED too: a server shutting down cancels calls it had received but not
    # yet handed to a handler (grpc/grpc#41785), and every call here is safe to repeat. A call this
    # client cancels itself never reaches the retry loop.
    retry_on: tuple[grpc.StatusCode, ...] = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)

    def backoff(self, retry: int) -> float:
        """Full jitter (AWS style): replicas restarting together are not hit in lockstep."""
        return random.uniform(0, min(self.max_backoff, self.initial_backoff * self.multiplier**retry))


@dataclass(frozen=True)
class SelectResult:
    chunk: np.ndarray  # [H, A] float32, robot units
    index: int  # chosen candidate, 0 = the policy's own chunk
    energies: np.ndarray  # [N] float32 (empty on fallback)
    candidates: np.ndarray | None  # [N, H, A] if asked for
    fallback: bool  # True: scoring failed and the policy's own chunk was returned
    fallback_reason: str
    model_version: str
    timing: dict[str, float]  # seconds per stage, server side
    batch_size: int  # requests that shared the server's batch


@dataclass(frozen=True)
class ScoreResult:
    energies: np.ndarray  # [B, N] float32
    argmin: np.ndarray  # [B] int
    model_version: str
    timing: dict[str, float]


@dataclass(frozen=True)
class ReloadResult:
    previous_version: str  # model_version before the swap
    model_version: str  # model_version of the answers from now on
    load_seconds: float  # server-side time to load, check and warm up the new head


@dataclass(frozen=True)
class ModelInfo:
    model_version: str
    policy_name: str
    chunk_len: int  # H
    action_dim: int  # A
    hidden_size: int  # D, for score()
    num_layers: int
    action_low: np.ndarray  # [A]
    action_high: np.ndarray  # [A]
    cameras: tuple[str, ...]
    image_size: tuple[int, int] | None  # (height, width)
    state_dim: int
    lowdim_dim: int
    gripper_dims: tuple[int, ...]
    max_candidates: int
    default_candidates: int
    scorer_backend: str
    max_batch: int
    switch_margin: float  # energy gain needed to leave the policy's chunk when a request does not say
    sampler_sigmas: tuple[float, ...]  # noise sigma schedule of the candidates, normalised action units
    gripper_mode: str  # gripper rule of the noise candidates: "keep", "flip" or "vote"
    # N -> share of answers that left the policy's chunk on the head's held-out episodes at
    # switch_margin (empty: not calibrated, or the server overrides the calibrated margin)
    calibrated_switch_rates: dict[int, float]
    raw: Any = field(repr=False, default=None)  # the ModelInfo message itself


# ------------------------------------------------------------------ messages <-> results
def _ip_family(address: str) -> str:
    host = address.rsplit(":", 1)[0].strip("[]")
    try:
        return "ipv4" if ipaddress.ip_address(host).version == 4 else "ipv6"
    except ValueError:
        raise ValueError(
            f"{address!r} is not ip:port; for host names use one 'dns:///name:port' target"
        ) from None


def select_request(
    images: Mapping[str, ImageLike] | None = None,
    state: np.ndarray | None = None,
    lowdim: np.ndarray | None = None,
    instruction: str = "",
    num_candidates: int | None = None,
    sigma_scale: float | None = None,
    seed: int | None = None,
    rule: str = "argmin",
    temperature: float = 0.0,
    return_candidates: bool = False,
    switch_margin: float | None = None,
) -> pb.SelectActionRequest:
    if rule not in RULES:
        raise ValueError(f"rule must be one of {sorted(RULES)}, got {rule!r}")
    params = pb.SelectParams(rule=RULES[rule], temperature=temperature, return_candidates=return_candidates)
    if num_candidates is not None:
        params.num_candidates = num_candidates
    if sigma_scale is not None:
        params.sigma_scale = sigma_scale
    if seed is not None:
        params.seed = seed
    if switch_margin is not None:
        params.switch_margin = switch_margin
    return pb.SelectActionRequest(
        observation=to_observation(images, state, lowdim, instruction), params=params
    )


def select_result(r: pb.SelectActionResponse) -> SelectResult:
    return SelectResult(
        chunk=from_tensor(r.chunk),
        index=int(r.index),
        energies=from_tensor(r.energies),
        candidates=from_tensor(r.candidates) if r.HasField("candidates") else None,
        fallback=r.fallback,
        fallback_reason=r.fallback_reason,
        model_version=r.model_version,
        timing=_timing(r.timing),
        batch_size=int(r.batch_size),
    )


def score_request(
    hidden: np.ndarray, candidates: np.ndarray, valid: np.ndarray | None = None, normalized: bool = True
) -> pb.ScoreCandidatesRequest:
    """hidden [B, S, D] float32/float16, candidates [B, N, H, A] float32, valid [B, S] bool."""
    req = pb.ScoreCandidatesRequest(
        hidden=to_tensor(hidden), candidates=to_tensor(candidates), normalized=normalized
    )
    if valid is not None:
        req.valid.CopyFrom(to_tensor(np.asarray(valid, bool)))
    return req


def score_result(r: pb.ScoreCandidatesResponse) -> ScoreResult:
    return ScoreResult(
        from_tensor(r.energies), np.asarray(r.argmin, np.int64), r.model_version, _timing(r.timing)
    )


def model_info(m: pb.ModelInfo) -> ModelInfo:
    return ModelInfo(
        model_version=m.model_version,
        policy_name=m.policy_name,
        chunk_len=m.chunk_len,
        action_dim=m.action_dim,
        hidden_size=m.hidden_size,
        num_layers=m.num_layers,
        action_low=np.asarray(m.action_low, np.float32),
        action_high=np.asarray(m.action_high, np.float32),
        cameras=tuple(m.cameras),
        image_size=(m.image_height, m.image_width) if m.image_height else None,
        state_dim=m.state_dim,
        lowdim_dim=m.lowdim_dim,
        gripper_dims=tuple(m.gripper_dims),
        max_candidates=m.max_candidates,
        default_candidates=m.default_candidates,
        scorer_backend=m.scorer_backend,
        max_batch=m.max_batch,
        switch_margin=m.switch_margin,
        sampler_sigmas=tuple(m.sampler_sigmas),
        gripper_mode=m.gripper_mode,
        calibrated_switch_rates=dict(zip(m.calibrated_switch_n, m.calibrated_switch_rate, strict=True)),
        raw=m,
    )


def _timing(t: pb.Timing) -> dict[str, float]:
    return {f.name.removesuffix("_seconds"): float(v) for f, v in t.ListFields()}


# ------------------------------------------------------------------ clients
class _Base:
    """Channel, credentials and the retry decision shared by the blocking and asyncio clients."""

    _grpc: Any = grpc  # the module whose channels this client opens (grpc or grpc.aio)

    def __init__(
        self,
        target: str = "127.0.0.1:50051",
        *,
        token: str | None = None,
        timeout: float = 5.0,
        retry: RetryPolicy = RetryPolicy(),
        tls: bool = False,
        root_certificates: bytes | None = None,
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        self.timeout, self.retry = timeout, retry
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()
        opts = [("grpc.max_receive_message_length", 64 * 1024 * 1024), *RECONNECT_OPTIONS, *options]
        if tls or root_certificates:
            creds = grpc.ssl_channel_credentials(root_certificates)
            self.channel = self._grpc.secure_channel(target, creds, options=opts)
        else:
            self.channel = self._grpc.insecure_channel(target, options=opts)
        self.stub = rerank_pb2_grpc.RerankServiceStub(self.channel)
        self.admin = rerank_pb2_grpc.RerankAdminStub(self.channel)

    def _deadline(self, timeout: float | None) -> float:
        return time.monotonic() + (self.timeout if timeout is None else timeout)

    def _backoff_or_raise(self, error: grpc.RpcError, attempt: int, deadline: float) -> float:
        """Seconds to wait before the next attempt; re-raises when retrying is pointless."""
        wait = self.retry.backoff(attempt)
        if (
            error.code() not in self.retry.retry_on
            or attempt + 1 >= self.retry.attempts
            or time.monotonic() + wait >= deadline
        ):
            raise error
        return wait


class RerankClient(_Base):
    """Blocking client. `target` may be any gRPC target; for several replicas,
    `target, options = replicas([...])` then `RerankClient(target, options=options)` spreads the
    calls over them round-robin, skipping replicas that are not SERVING.
    Arguments: token (bearer), timeout (seconds per call, retries included), retry, tls,
    root_certificates (PEM bytes to trust), options (extra gRPC channel options)."""

    def info(self, timeout: float | None = None) -> ModelInfo:
        return model_info(self._call(self.stub.GetModelInfo, pb.GetModelInfoRequest(), timeout))

    def select(self, images: Mapping[str, ImageLike] | None = None, state: np.ndarray | None = None,
               *, timeout: float | None = None, **kwargs: Any) -> SelectResult:  # fmt: skip
        """Observation -> chosen chunk. kwargs: lowdim, instruction, num_candidates, sigma_scale,
        seed, rule ("argmin" | "softmax"), temperature, return_candidates, switch_margin."""
        req = select_request(images, state, **kwargs)
        return select_result(self._call(self.stub.SelectAction, req, timeout))

    def score(self, hidden: np.ndarray, candidates: np.ndarray, valid: np.ndarray | None = None,
              normalized: bool = True, *, timeout: float | None = None) -> ScoreResult:  # fmt: skip
        """hidden [B, S, D], candidates [B, N, H, A], valid [B, S] bool -> energies [B, N]."""
        req = score_request(hidden, candidates, valid, normalized)
        return score_result(self._call(self.stub.ScoreCandidates, req, timeout))

    def reload_energy_head(self, energy_path: str = "", *, timeout: float | None = 120.0) -> ReloadResult:
        """Swap the server's energy head for the bundle at `energy_path` (a path on the server;
        empty = reload the current one). Needs the server's token."""
        r = self._call(
            self.admin.ReloadEnergyHead, pb.ReloadEnergyHeadRequest(energy_path=energy_path), timeout
        )
        return ReloadResult(r.previous_version, r.model_version, r.load_seconds)

    def _call(self, method: Callable[..., Any], request: Any, timeout: float | None) -> Any:
        deadline = self._deadline(timeout)
        attempt = 0
        while True:
            try:
                return method(request, timeout=max(deadline - time.monotonic(), 0.0), metadata=self._metadata)
            except grpc.RpcError as e:
                time.sleep(self._backoff_or_raise(e, attempt, deadline))
            attempt += 1

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> RerankClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncRerankClient(_Base):
    """asyncio twin of RerankClient: same arguments, awaitable methods."""

    _grpc = grpc.aio

    async def info(self, timeout: float | None = None) -> ModelInfo:
        return model_info(await self._call(self.stub.GetModelInfo, pb.GetModelInfoRequest(), timeout))

    async def select(self, images: Mapping[str, ImageLike] | None = None, state: np.ndarray | None = None,
                     *, timeout: float | None = None, **kwargs: Any) -> SelectResult:  # fmt: skip
        req = select_request(images, state, **kwargs)
        return select_result(await self._call(self.stub.SelectAction, req, timeout))

    async def score(self, hidden: np.ndarray, candidates: np.ndarray, valid: np.ndarray | None = None,
                    normalized: bool = True, *, timeout: float | None = None) -> ScoreResult:  # fmt: skip
        req = score_request(hidden, candidates, valid, normalized)
        return score_result(await self._call(self.stub.ScoreCandidates, req, timeout))

    async def reload_energy_head(
        self, energy_path: str = "", *, timeout: float | None = 120.0
    ) -> ReloadResult:
        req = pb.ReloadEnergyHeadRequest(energy_path=energy_path)
        r = await self._call(self.admin.ReloadEnergyHead, req, timeout)
        return ReloadResult(r.previous_version, r.model_version, r.load_seconds)

    async def _call(self, method: Callable[..., Any], request: Any, timeout: float | None) -> Any:
        deadline = self._deadline(timeout)
        attempt = 0
        while True:
            try:
                remaining = max(deadline - time.monotonic(), 0.0)
                return await method(request, timeout=remaining, metadata=self._metadata)
            except grpc.RpcError as e:
                await asyncio.sleep(self._backoff_or_raise(e, attempt, deadline))
            attempt += 1

    async def close(self) -> None:
        await self.channel.close()

    async def __aenter__(self) -> AsyncRerankClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
