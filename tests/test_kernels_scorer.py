"""The kernels package without triton: its import, the folded weights' algebra, the serve flags."""

from __future__ import annotations

import pytest
import torch

from energy_rerank.config import EnergyConfig
from energy_rerank.energy import EnergyModel
from energy_rerank.kernels.folded_weights import fold_energy_head, score_folded
from energy_rerank.scoring.inputs import random_inputs
from energy_rerank.scoring.torch_scorer import TorchScorer


def tiny_model(**kw) -> EnergyModel:
    torch.manual_seed(0)
    cfg = EnergyConfig(context_dim=24, action_dim=7, chunk_len=8, hidden=32, heads=2, **kw)
    return EnergyModel(cfg).eval()


def test_import_needs_neither_triton_nor_cuda():
    import subprocess
    import sys

    code = "import sys, energy_rerank.kernels; assert 'triton' not in sys.modules, 'triton imported eagerly'"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("activation", ["softplus", "sigmoid", "identity"])
def test_folded_weights_compute_the_same_head(activation):
    """The algebra the kernels rely on (fc2 . W_q, PE table, fc2 . W_kv, folded LN), in torch."""
    model = tiny_model(activation=activation, action_offset=1)
    hidden, valid, cand = random_inputs(3, 4, 11, 24, 6, 9, torch.float32, torch.device("cpu"), seed=4)
    ref = TorchScorer(model).score(hidden, valid, cand)
    for fold_ln_min_k in (1024, 16):
        head = fold_energy_head(model, fold_ln_min_k=fold_ln_min_k)
        out = score_folded(head, hidden, valid, cand)
        assert float(((out - ref).abs() / ref.abs().clamp_min(1e-3)).max()) <= 1e-4
        for layer in (*head.context, *head.actions, head.out_proj, *head.head):
            assert not layer.weight.requires_grad  # folded under no_grad: no autograd graph kept alive
            assert layer.colsum is None or torch.equal(layer.colsum, layer.weight.double().sum(0).float())


def test_serve_chains_and_precision_flags_reach_the_server_config():
    """`serve --chains` pins the Triton plan and `--fp32-precision` its fp32 dot; bad values are
    refused before any model loads."""
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
    assert config_from_args(parser.parse_args(["serve"])).fp32_precision == "tf32x3"
    assert config_from_args(parser.parse_args(["serve", "--fp32-precision", "ieee"])).fp32_precision == "ieee"
    with pytest.raises(SystemExit):
        parser.parse_args(["serve", "--fp32-precision", "fp16"])
    with pytest.raises(ValueError, match="fp32_precision must be one of"):
        ServerConfig(fp32_precision="fp16")
