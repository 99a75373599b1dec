"""ServerConfig: every knob of `energy-rerank serve`, frozen, with the reason for each default."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import energy_rerank
from energy_rerank.candidates import MAX_CANDIDATES, SamplerConfig
from energy_rerank.kernels.triton_support import CHAIN_MODES, FP32_PRECISIONS
from energy_rerank.selection import check_switch_margin
from energy_rerank.server.batcher import BatchConfig
from energy_rerank.server.images import DEFAULT_REQUEST_PIXELS
from energy_rerank.server.observation_keys import ObservationKeys
from energy_rerank.server.switch_watch import WatchConfig

# The embedded default served by a bare `energy-rerank serve`: the tiny reference policy and an
# energy head trained on the synthetic task with the project's own commands (see docs/serving.md).
ASSETS = Path(energy_rerank.__file__).resolve().parent / "assets" / "default"
DEFAULT_POLICY = ASSETS / "policy"
DEFAULT_ENERGY = ASSETS / "energy"


@dataclass(frozen=True)
class ServerConfig:
    policy_path: Path = DEFAULT_POLICY  # policy bundle directory (energy_rerank.policy.loading)
    energy_path: Path = DEFAULT_ENERGY  # energy-head bundle directory (EnergyModel.from_pretrained)
    device: str = "cpu"  # torch device for both models, e.g. "cuda:0"
    backend: str = "auto"  # scorer: auto (triton on CUDA, else torch) | torch | triton | onnxruntime
    onnx_path: Path | None = None  # exported energy head for backend onnxruntime (`energy-rerank export`)
    # triton, fp32 heads: tl.dot precision; tf32x3 matches torch fp32 (~3e-7 on an H100), ieee
    # skips the tensor cores
    fp32_precision: str = "tf32x3"
    # triton: "fused" chains of hidden-wide layers (6 launches a call), "fused_cublas" (the same,
    # context's D_h-wide product on cuBLAS; bf16), "layered" (21), or "auto": every plan that can
    # run captured per CUDA-graph bucket at start-up and the fastest kept (docs/kernels.md)
    chains: str = "auto"
    address: str = "127.0.0.1:50051"  # host:port to bind; loopback unless exposed on purpose
    # openpi's websocket protocol (server/openpi_frontend.py) on this host:port too; None = off
    openpi_address: str | None = None
    # where openpi observation dicts keep each input the policy reads (default: openpi's LIBERO example)
    openpi_keys: ObservationKeys = field(default_factory=ObservationKeys)
    # OpenVLA-OFT's POST /act JSON protocol (server/oft_frontend.py) on this host:port too; None = off
    oft_address: str | None = None
    batch: BatchConfig = field(default_factory=BatchConfig)  # dynamic batching knobs
    max_candidates: int = 1024  # largest N a request may ask for (bounds memory per request)
    default_candidates: int = 64  # N when a request leaves num_candidates at 0
    # energy gain a candidate needs to replace the policy's chunk when a request leaves it unset;
    # 0 = plain argmin, inf = never; None = the energy bundle's selection.json (written by
    # `energy-rerank eval offline --write-margin`), or 0 when it has none
    switch_margin: float | None = None
    # live switch rate against the head's calibrated one (server/switch_watch.py): gauges, and a
    # warning when the robot's states make the head switch far more often than on the demos
    switch_watch: WatchConfig = field(default_factory=WatchConfig)
    # how noise candidates are built around the policy's chunk; None = what the energy head was
    # trained to rank (its bundle's record, `train --sigmas --gripper-mode`; SamplerConfig's
    # defaults for bundles without one). A value here overrides the head's.
    sigmas: tuple[float, ...] | None = None  # noise sigma schedule, normalised action units
    gripper_mode: str | None = None  # "keep", "flip" or "vote" (see energy_rerank.candidates)
    layer_candidates: tuple[int, ...] | None = None  # the policy's layer chunks among the candidates; () = none
    max_message_bytes: int = 4 * 1024 * 1024  # larger requests get RESOURCE_EXHAUSTED (gRPC's default)
    # pixels one request's images may decode to, over the cameras the policy reads (others are never
    # decoded); beyond it INVALID_ARGUMENT. 4096 x 4096 = 16.8 M pixels = 50 MB of RGB
    max_request_pixels: int = DEFAULT_REQUEST_PIXELS
    # pixels decoded and held at once over all requests (decoding, queued or running): bounds the
    # server's image memory (3 bytes a pixel, ~200 MB here); beyond it RESOURCE_EXHAUSTED, retry later
    max_decoded_pixels: int = 4 * DEFAULT_REQUEST_PIXELS
    auth_token: str | None = None  # bearer token required on every call but health; None = no auth
    tls_cert: Path | None = None  # PEM certificate chain; with tls_key enables TLS
    tls_key: Path | None = None  # PEM private key for tls_cert
    metrics_port: int | None = 9464  # Prometheus exporter port (0 = any free port, None = off)
    metrics_address: str = "127.0.0.1"  # the exporter's bind address
    drain_seconds: float = 5.0  # on shutdown: how long in-flight requests may take to finish
    # on shutdown: model calls reaching the server this long after the signal are still served
    # (they were sent before it, or before any client could know); later ones get UNAVAILABLE
    drain_accept_seconds: float = 0.25

    def __post_init__(self) -> None:
        if not 1 <= self.max_candidates <= MAX_CANDIDATES:
            raise ValueError(f"max_candidates={self.max_candidates} must be in [1, {MAX_CANDIDATES}]")
        if not 1 <= self.default_candidates <= self.max_candidates:
            raise ValueError(
                f"default_candidates={self.default_candidates} must be in [1, max_candidates={self.max_candidates}]"
            )
        if self.switch_margin is not None:
            check_switch_margin(self.switch_margin, "switch_margin")
        overrides: dict[str, Any] = {"sigmas": self.sigmas, "gripper_mode": self.gripper_mode}
        SamplerConfig(**{k: v for k, v in overrides.items() if v is not None})  # raises on bad values
        if self.fp32_precision not in FP32_PRECISIONS:
            raise ValueError(f"fp32_precision must be one of {FP32_PRECISIONS}, got {self.fp32_precision!r}")
        if self.chains not in CHAIN_MODES:
            raise ValueError(f"chains must be one of {CHAIN_MODES}, got {self.chains!r}")
        if not 1 <= self.max_request_pixels <= self.max_decoded_pixels:
            raise ValueError(
                f"need 1 <= max_request_pixels ({self.max_request_pixels}) <= max_decoded_pixels "
                f"({self.max_decoded_pixels}): a request within its budget must fit the server's"
            )
        if not 0 <= self.drain_accept_seconds <= self.drain_seconds:
            raise ValueError(
                f"need 0 <= drain_accept_seconds ({self.drain_accept_seconds}) <= drain_seconds ({self.drain_seconds})"
            )
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("TLS needs both tls_cert and tls_key")
        if self.auth_token is not None and not self.auth_token.strip():
            raise ValueError("auth_token must not be empty (use None to turn auth off)")
