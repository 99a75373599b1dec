"""energy_rerank.kernels: fast scoring of the energy head.

- `make_scorer(model, backend="auto")` / `EnergyScorer`: one Scorer over the triton, torch and
  onnxruntime backends (scorer.py), optionally replayed from CUDA graphs (cuda_graphs.py);
- the Triton path (triton_scorer.py): fused_linear.py, energy_attention.py, energy_readout.py on
  weights prepared by folded_weights.py;
- ONNX export (onnx_export.py, `energy-rerank export --onnx`), timing and floors (timing.py), and
  the GPU acceptance run (`python -m energy_rerank.kernels.check_gpu`).

Importing this package needs neither triton nor CUDA: triton is imported only when the Triton
backend is built.
"""

from energy_rerank.kernels.scorer import EnergyScorer, ScorerConfig, make_scorer, resolve_backend

__all__ = ["EnergyScorer", "ScorerConfig", "make_scorer", "resolve_backend"]
