"""EnergyScorer: one Scorer interface over the triton, torch and onnxruntime backends.

`auto` picks triton when the model is on CUDA and triton is importable, else torch. onnxruntime
is never picked automatically: it needs an exported file (`energy-rerank export --onnx`).
CUDA graphs wrap the chosen backend when the model is on CUDA and the config asks for them.
The Triton backend (energy_rerank.kernels) is imported only when it is asked about or built, so
this module imports neither triton nor the kernels.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from energy_rerank.energy import EnergyModel
from energy_rerank.scoring.cuda_graphs import DEFAULT_B_BUCKETS, DEFAULT_N_BUCKETS, GraphedScorer
from energy_rerank.scoring.protocol import Scorer
from energy_rerank.scoring.torch_scorer import TorchScorer

Backend = Literal["auto", "triton", "torch", "onnxruntime"]
BACKENDS = ("auto", "triton", "torch", "onnxruntime")


@dataclass(frozen=True)
class ScorerConfig:
    """How scoring runs: make_scorer's options (the server passes its own config's values)."""

    backend: Backend = "auto"  # auto = triton on CUDA when triton imports, else torch
    dtype: Literal["model", "float32", "bfloat16"] = "model"  # triton compute dtype (model = as loaded)
    cuda_graphs: bool = True  # capture each (B, N) bucket in a CUDA graph (CUDA only)
    b_buckets: tuple[int, ...] = DEFAULT_B_BUCKETS  # graph buckets for the number of contexts
    n_buckets: tuple[int, ...] = DEFAULT_N_BUCKETS  # graph buckets for candidates per context
    autotune: bool = True  # triton: search block sizes per shape on the GPU (else the heuristic)
    # triton, fp32 models: tl.dot precision. tf32x3 (three tensor-core products) matches torch's
    # fp32 (~3e-7 on the H100); ieee skips the tensor cores.
    fp32_precision: Literal["tf32x3", "ieee"] = "tf32x3"
    # triton: "fused" runs each chain of hidden-wide layers as one launch (6 launches a call),
    # "fused_cublas" the same with the D_h-wide context product on cuBLAS (bf16 only), "layered"
    # one launch per layer (21); "auto" captures every plan that can run per CUDA-graph bucket and
    # keeps the fastest (eagerly, without graphs: fused).
    chains: Literal["auto", "fused", "fused_cublas", "layered"] = "auto"
    onnx_path: str | None = None  # onnxruntime: the exported file


def resolve_backend(model: EnergyModel, backend: str) -> str:
    """'auto' -> the concrete backend for this model's device; other names are checked."""
    if backend not in BACKENDS:
        raise ValueError(f"scorer backend must be one of {BACKENDS}, got {backend!r}")
    if backend != "auto":
        return backend
    device = next(model.parameters()).device
    if device.type != "cuda":
        return "torch"
    from energy_rerank.kernels.triton_support import triton_usable, unsupported_reason

    return "triton" if triton_usable(device) and unsupported_reason(model.config) is None else "torch"


class EnergyScorer:
    """The scorer the reranker holds: `score(hidden, valid, candidates) -> [B, N]` on any backend."""

    def __init__(self, model: EnergyModel, config: ScorerConfig | None = None) -> None:
        self.config = config = config or ScorerConfig()
        self.backend = resolve_backend(model, config.backend)
        device = next(model.parameters()).device
        impl: Scorer
        if self.backend == "triton":
            from energy_rerank.kernels.triton_scorer import TritonScorer

            dtype = None if config.dtype == "model" else getattr(torch, config.dtype)
            impl = TritonScorer(
                model, dtype=dtype, autotune=config.autotune, fp32_precision=config.fp32_precision, chains=config.chains
            )
        elif self.backend == "torch":
            impl = TorchScorer(model)
        else:
            if not config.onnx_path:
                raise ValueError("backend 'onnxruntime' needs onnx_path (write it with `energy-rerank export --onnx`)")
            from energy_rerank.scoring.onnx_export import OnnxScorer

            impl = OnnxScorer(Path(config.onnx_path), device=device)
        if config.cuda_graphs and device.type == "cuda" and self.backend != "onnxruntime":
            impl = GraphedScorer(impl, config.b_buckets, config.n_buckets)
        self.impl = impl
        self.name = impl.name

    def score(self, hidden: torch.Tensor, valid: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """hidden [B, S, D], valid [B, S] bool, candidates [B, N, H, A] -> energies [B, N] float32."""
        return self.impl.score(hidden, valid, candidates)


def make_scorer(model: EnergyModel, backend: Backend = "auto", **options) -> EnergyScorer:
    """EnergyScorer for `model`; options are ScorerConfig fields (e.g. cuda_graphs=False)."""
    return EnergyScorer(model, ScorerConfig(backend=backend, **options))
