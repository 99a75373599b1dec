"""ONNX export of the energy head (hidden, valid, candidates -> energies) and its onnxruntime scorer.

The exported graph has dynamic B (contexts), N (candidates) and S (context tokens); H and A are
fixed by the example (the model's chunk length and its input action width). Export always goes
through a float32 CPU copy of the model, so the file is the same whatever device trained it.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from energy_rerank.energy import EnergyModel

INPUT_NAMES = ("hidden", "valid", "candidates")
OUTPUT_NAME = "energies"
DEFAULT_OPSET = 18


class EnergyHeadGraph(nn.Module):
    """EnergyModel.encode_context + EnergyModel.score as one traceable forward."""

    def __init__(self, model: EnergyModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, hidden: torch.Tensor, valid: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        return self.model.score(self.model.encode_context(hidden, valid), candidates)  # [B, N]


def export_onnx(
    model: EnergyModel,
    path: str | Path,
    action_width: int | None = None,  # A_in of the candidates the server sends (default: offset + dim)
    steps: int | None = None,  # H of the candidates (default: the model's chunk_len)
    opset: int = DEFAULT_OPSET,
) -> Path:
    """Write `model`'s energy head to `path` as ONNX with dynamic B, N and S."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    c = model.config
    m = copy.deepcopy(model).float().cpu().eval()
    m.debug_checks = False
    a_in = action_width or (c.action_offset + c.action_dim)
    h = steps or c.chunk_len
    b, n, s = 2, 3, 5  # example sizes; none may be 0 or 1 (torch.export would specialise them)
    gen = torch.Generator().manual_seed(0)
    example = (
        torch.randn(b, s, c.context_dim, generator=gen),
        torch.ones(b, s, dtype=torch.bool),
        torch.randn(b, n, h, a_in, generator=gen),
    )
    batch, cands, tokens = (torch.export.Dim(x, min=1, max=1 << 16) for x in ("B", "N", "S"))
    dynamic = {"hidden": {0: batch, 1: tokens}, "valid": {0: batch, 1: tokens}, "candidates": {0: batch, 1: cands}}
    # The exporter narrates its stages and warns about its own internals (axis renaming, pytree
    # deprecations); keep the CLI's output to our own lines.
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore", (UserWarning, FutureWarning))
        torch.onnx.export(
            EnergyHeadGraph(m).eval(),
            example,
            str(path),
            dynamo=True,
            input_names=list(INPUT_NAMES),
            output_names=[OUTPUT_NAME],
            dynamic_shapes=dynamic,
            opset_version=opset,
            external_data=False,  # one self-contained file (the seed head is ~25 MB in fp32)
            verbose=False,
        )
    return path


class OnnxScorer:
    """Scorer protocol on onnxruntime: the CUDA provider when onnxruntime-gpu is installed and
    asked for, else the CPU provider."""

    name = "onnxruntime"

    def __init__(self, path: str | Path, device: str | torch.device = "cpu") -> None:
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"no ONNX file at {self.path} (write one with `energy-rerank export --onnx`)")
        want_cuda = torch.device(device).type == "cuda"
        providers = ["CPUExecutionProvider"]
        if want_cuda and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        self.session = ort.InferenceSession(str(self.path), providers=providers)
        self.providers = self.session.get_providers()
        shape = {i.name: i.shape for i in self.session.get_inputs()}
        self.steps, self.action_width = shape["candidates"][2], shape["candidates"][3]

    def score(self, hidden: torch.Tensor, valid: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """hidden [B, S, D], valid [B, S] bool, candidates [B, N, H, A] -> energies [B, N] float32."""
        if candidates.dim() != 4 or tuple(candidates.shape[2:]) != (self.steps, self.action_width):
            raise ValueError(
                f"candidates must be [B, N, {self.steps}, {self.action_width}] for {self.path.name}, "
                f"got {tuple(candidates.shape)}"
            )
        feed = {
            "hidden": hidden.detach().float().cpu().numpy(),
            "valid": valid.detach().cpu().numpy().astype(np.bool_),
            "candidates": candidates.detach().float().cpu().numpy(),
        }
        (energies,) = self.session.run([OUTPUT_NAME], feed)
        return torch.from_numpy(energies).to(hidden.device)
