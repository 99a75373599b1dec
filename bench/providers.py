"""Scoring providers compared by bench/latency.py, all behind the Scorer protocol.

- seed:          the source documents' form: the context copied once per (context, candidate)
                 pair and run through the pairwise forward ([B*N, S, D] rows);
- torch:         shared context, eager PyTorch (the core's reference `score`);
- torch_compile: the same function under torch.compile (CUDA graphs on the GPU via
                 mode="reduce-overhead");
- onnxruntime:   the exported ONNX head (`energy-rerank export --onnx`);
- triton:        the fused kernels with CUDA graphs (CUDA only), the plan chosen per bucket by
                 timing every plan at capture (chains="auto");
- triton_fused / triton_fused_cublas / triton_layered: the same with the plan pinned: one launch
                 per chain of hidden-wide layers (6 a call), the same with the context's D_h-wide
                 product on cuBLAS (bf16 only), or one per layer (21), to compare them directly.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

from energy_rerank.energy import EnergyModel
from energy_rerank.scoring import Scorer, TorchScorer

PROVIDERS = (
    "seed", "torch", "torch_compile", "onnxruntime", "triton", "triton_fused", "triton_fused_cublas", "triton_layered",
)


class SeedScorer:
    """Copy the context per candidate, as the seed's in-batch loss did (a baseline, not for use)."""

    name = "seed"

    def __init__(self, model: EnergyModel) -> None:
        self.model = model.eval()

    @torch.inference_mode()
    def score(self, hidden: torch.Tensor, valid: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        b, n, h, a = candidates.shape
        s, d = hidden.shape[1:]
        rep = hidden.unsqueeze(1).expand(b, n, s, d).reshape(b * n, s, d)  # [B*N, S, D]
        mask = valid.unsqueeze(1).expand(b, n, s).reshape(b * n, s)  # [B*N, S]
        return self.model(rep, candidates.reshape(b * n, h, a), mask).view(b, n).float()


class CompiledScorer:
    name = "torch_compile"

    def __init__(self, model: EnergyModel) -> None:
        self.model = model.eval()
        mode = "reduce-overhead" if next(model.parameters()).is_cuda else "default"
        self._fn = torch.compile(self._score, mode=mode, dynamic=False)

    def _score(self, hidden: torch.Tensor, valid: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        return self.model.score(self.model.encode_context(hidden, valid), candidates).float()

    @torch.inference_mode()
    def score(self, hidden: torch.Tensor, valid: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        return self._fn(hidden, valid, candidates).clone()  # clone: CUDA-graph outputs are reused


def unavailable_reason(provider: str, device: torch.device) -> str | None:
    """Why a provider cannot run here, or None."""
    if provider.startswith("triton"):
        if device.type != "cuda":
            return "triton needs a CUDA device"
        from energy_rerank.kernels.triton_support import triton_usable

        if not triton_usable(device):
            return "triton is not importable for this device"
    if provider == "onnxruntime":
        try:
            import onnxruntime
        except ImportError:
            return "onnxruntime is not installed"
        if device.type == "cuda" and "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
            return "onnxruntime has no CUDA provider here (install onnxruntime-gpu)"
    return None


def build(provider: str, model: EnergyModel, steps: int, workdir: Path | None = None) -> Scorer:
    """A scorer of the given provider for `model` (already on its device and dtype)."""
    makers: dict[str, Callable[[], Scorer]] = {
        "seed": lambda: SeedScorer(model),
        "torch": lambda: TorchScorer(model),
        "torch_compile": lambda: CompiledScorer(model),
        "onnxruntime": lambda: _onnx(model, steps, workdir),
        "triton": lambda: _triton(model, "auto"),
        "triton_fused": lambda: _triton(model, "fused"),
        "triton_fused_cublas": lambda: _triton(model, "fused_cublas"),
        "triton_layered": lambda: _triton(model, "layered"),
    }
    if provider not in makers:
        raise ValueError(f"unknown provider {provider!r}; known: {PROVIDERS}")
    return makers[provider]()


def _onnx(model: EnergyModel, steps: int, workdir: Path | None) -> Scorer:
    from energy_rerank.scoring.onnx_export import OnnxScorer, export_onnx

    directory = workdir or Path(tempfile.mkdtemp(prefix="energy-onnx-"))
    c = model.config
    path = directory / f"energy_D{c.context_dim}_h{c.hidden}_H{steps}.onnx"
    if not path.is_file():
        export_onnx(model, path, steps=steps)
    return OnnxScorer(path, device=next(model.parameters()).device)


def _triton(model: EnergyModel, chains: str) -> Scorer:
    from energy_rerank.scoring.backends import make_scorer

    return make_scorer(model, backend="triton", cuda_graphs=True, chains=chains)
