"""Scoring: contexts and candidate chunks -> energies, on whichever backend fits.

- `Scorer` (protocol.py): the one call the reranker makes, `score(hidden, valid, candidates)`;
- `TorchScorer` (torch_scorer.py): eager PyTorch, the reference every backend is checked against;
- `make_scorer` / `EnergyScorer` (backends.py): dispatch over torch, onnxruntime and the Triton
  kernels (energy_rerank.kernels, imported only when that backend is asked for), optionally
  replayed from CUDA graphs (`GraphedScorer`, cuda_graphs.py);
- ONNX export and its onnxruntime scorer (onnx_export.py, `energy-rerank export`, cli.py).

Importing this package needs neither triton, onnxruntime nor CUDA.
"""

from energy_rerank.scoring.backends import BACKENDS, EnergyScorer, ScorerConfig, make_scorer, resolve_backend
from energy_rerank.scoring.protocol import Scorer
from energy_rerank.scoring.torch_scorer import TorchScorer

__all__ = ["BACKENDS", "EnergyScorer", "Scorer", "ScorerConfig", "TorchScorer", "make_scorer", "resolve_backend"]
