"""Backend dispatch, timing and floors, and (on a GPU) CUDA-graph replay of the scorer."""

from __future__ import annotations

import pytest
import torch

from energy_rerank.config import EnergyConfig
from energy_rerank.energy import EnergyModel
from energy_rerank.kernels import EnergyScorer, ScorerConfig, make_scorer, resolve_backend
from energy_rerank.kernels.folded_weights import fold_energy_head, score_folded
from energy_rerank.kernels.timing import random_inputs, score_floors, time_scorer
from energy_rerank.scoring import Scorer, TorchScorer


def tiny_model(**kw) -> EnergyModel:
    torch.manual_seed(0)
    cfg = EnergyConfig(context_dim=24, action_dim=7, chunk_len=8, hidden=32, heads=2, **kw)
    return EnergyModel(cfg).eval()


def test_import_needs_neither_triton_nor_cuda():
    import subprocess
    import sys

    code = "import sys, energy_rerank.kernels; assert 'triton' not in sys.modules, 'triton imported eagerly'"
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


@pytest.mark.parametrize("activation", ["softplus", "sigmoid", "identity"])
def test_folded_weights_compute_the_same_head(activation):
    """The algebra the kernels rely on (fc2 . W_q, PE table, fc2 . W_kv, folded LN), in torch."""
    model = tiny_model(activation=activation, action_offset=1)
    hidden, valid, cand = random_inputs(3, 4, 11, 24, 6, 9, torch.float32, torch.device("cpu"), seed=4)
    ref = TorchScorer(model).score(hidden, valid, cand)
    for fold_ln_min_k in (1024, 16):
        out = score_folded(fold_energy_head(model, fold_ln_min_k=fold_ln_min_k), hidden, valid, cand)
        assert float(((out - ref).abs() / ref.abs().clamp_min(1e-3)).max()) <= 1e-4


def test_floors_count_the_folded_head_flops():
    """score_floors' FLOPs equal what torch's flop counter sees in the folded head."""
    from torch.utils.flop_counter import FlopCounterMode

    model = tiny_model()
    b, n, s, h = 2, 5, 13, 8
    head = fold_energy_head(model)
    hidden, valid, cand = random_inputs(b, n, s, 24, h, 7, torch.float32, torch.device("cpu"))
    with FlopCounterMode(display=False) as counter:
        score_folded(head, hidden, valid, cand)
    floors = score_floors(model.config, b, n, s, h, torch.float32)
    assert floors.flops == pytest.approx(counter.get_total_flops(), rel=1e-6)
    seed = score_floors(EnergyConfig(), 8, 64, 300, 8, torch.bfloat16)
    assert 20e9 < seed.flops < 40e9 and seed.flop_s > seed.byte_s  # ANCHORS.md: ~26 GFLOP, ~30 MB


def test_time_scorer_on_cpu():
    t = time_scorer(TorchScorer(tiny_model()), 2, 4, 5, 24, torch.float32, device="cpu", calls=5, warmup=1)
    assert 0 < t.p10_ms <= t.median_ms <= t.p90_ms


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


def test_serve_chains_flag_reaches_the_server_config():
    """`serve --chains` pins the Triton plan; a bad value is refused before any model loads."""
    import argparse

    from energy_rerank.server.cli import add_parser, config_from_args
    from energy_rerank.server.config import ServerConfig

    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    assert config_from_args(parser.parse_args(["serve"])).chains == "auto"
    assert config_from_args(parser.parse_args(["serve", "--chains", "layered"])).chains == "layered"
    assert config_from_args(parser.parse_args(["serve", "--chains", "fused_cublas"])).chains == "fused_cublas"
    with pytest.raises(SystemExit):
        parser.parse_args(["serve", "--chains", "persistent"])
    with pytest.raises(ValueError, match="chains must be one of"):
        ServerConfig(chains="persistent")


def test_acceptance_lines_from_partial_and_full_runs():
    """check_gpu judges the issue's lines from the rows it has: a run cut short by its time limit
    reports the missing lines as not measured (None), never as passed."""
    from energy_rerank.kernels.check_gpu import acceptance

    def row(dtype, b, n, ms, speedup=1.0, err=1e-4, precision="-"):
        return {"dtype": dtype, "B": b, "N": n, "fp32_precision": precision, "triton_ms": ms, "speedup": speedup,
                "max_rel_err_vs_fp32": err}  # fmt: skip

    partial = dict(acceptance([row("bfloat16", 8, 64, 0.09)]))
    assert partial["bf16 B=8 N=64 <= 0.10 ms"] is True
    assert partial["bf16 B=32 N=64 >= 5x eager"] is None and partial["fp32 energies within 1e-3"] is None
    assert dict(acceptance([]))["bf16 energies within 2e-2 of fp32"] is None
    full = dict(acceptance([
        row("bfloat16", 8, 64, 0.12), row("bfloat16", 32, 64, 0.2, speedup=5.5, err=3e-2),
        row("float32", 8, 64, 0.24, precision="tf32x3", err=2e-3),
    ]))  # fmt: skip
    assert full == {
        "bf16 B=8 N=64 <= 0.10 ms": False, "bf16 B=32 N=64 >= 5x eager": True,
        "fp32 (tf32x3) B=8 N=64 <= 0.25 ms": True,
        "bf16 energies within 2e-2 of fp32": False, "fp32 energies within 1e-3": False,
    }  # fmt: skip
