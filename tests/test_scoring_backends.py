"""Backend dispatch (make_scorer) and, on a GPU, CUDA-graph replay of the scorer."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from energy_rerank.config import EnergyConfig
from energy_rerank.energy import EnergyModel
from energy_rerank.scoring import (
    EnergyScorer,
    Scorer,
    ScorerConfig,
    TorchScorer,
    make_scorer,
    resolve_backend,
)
from energy_rerank.scoring.inputs import random_inputs


def tiny_model(**kw) -> EnergyModel:
    torch.manual_seed(0)
    cfg = EnergyConfig(context_dim=24, action_dim=7, chunk_len=8, hidden=32, heads=2, **kw)
    return EnergyModel(cfg).eval()


def test_import_needs_neither_grpc_triton_nor_onnxruntime():
    """The core's scoring package, dispatch included: the other backends load only when built."""
    code = (
        "import sys, energy_rerank.scoring, energy_rerank.scoring.cli\n"
        "loaded = {'grpc', 'triton', 'onnxruntime', 'energy_rerank.kernels'} & set(sys.modules)\n"
        "assert not loaded, loaded"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_auto_picks_torch_without_cuda_and_matches_reference():
    model = tiny_model()
    scorer = make_scorer(model)
    assert isinstance(scorer, Scorer) and scorer.backend == "torch" and scorer.name == "torch"
    hidden, valid, cand = random_inputs(2, 3, 5, 24, 8, 7, torch.float32, torch.device("cpu"))
    ref = TorchScorer(model).score(hidden, valid, cand)
    assert torch.equal(scorer.score(hidden, valid, cand), ref)


def test_backend_errors_are_named():
    model = tiny_model()
    with pytest.raises(ValueError, match="must be one of"):
        resolve_backend(model, "tensorrt")
    with pytest.raises(ValueError, match="onnx_path"):
        EnergyScorer(model, ScorerConfig(backend="onnxruntime"))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_cuda_graph_replay_equals_eager(backend):
    model = tiny_model().cuda()
    eager = make_scorer(model, backend, cuda_graphs=False)
    graphed = make_scorer(model, backend, b_buckets=(2, 4), n_buckets=(4, 8))
    assert graphed.name.endswith("+graph")
    for b, n, seed in [(2, 3, 0), (3, 8, 1), (1, 1, 2), (3, 5, 3)]:  # padded and exact buckets, reused graphs
        inputs = random_inputs(b, n, 7, 24, 8, 7, torch.float32, torch.device("cuda"), seed=seed)
        torch.testing.assert_close(graphed.score(*inputs), eager.score(*inputs), rtol=1e-5, atol=1e-5)
    assert len(graphed.impl.graphs) == 2
    above = random_inputs(5, 9, 7, 24, 8, 7, torch.float32, torch.device("cuda"))  # above both buckets: eager
    torch.testing.assert_close(graphed.score(*above), eager.score(*above), rtol=1e-5, atol=1e-5)
    assert len(graphed.impl.graphs) == 2
