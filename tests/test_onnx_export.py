"""ONNX export of the energy head: one file, dynamic B, N and S, equal to torch within 1e-4."""

from __future__ import annotations

import pytest
import torch

from energy_rerank.config import EnergyConfig
from energy_rerank.energy import EnergyModel
from energy_rerank.scoring import TorchScorer

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from energy_rerank.scoring.inputs import random_inputs  # noqa: E402
from energy_rerank.scoring.onnx_export import OnnxScorer, export_onnx  # noqa: E402

A_IN, STEPS = 9, 6


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    torch.manual_seed(0)
    cfg = EnergyConfig(context_dim=40, action_dim=7, action_offset=2, chunk_len=8, hidden=32, heads=4)
    model = EnergyModel(cfg).eval()
    path = export_onnx(model, tmp_path_factory.mktemp("onnx") / "energy.onnx", action_width=A_IN, steps=STEPS)
    return model, path


@pytest.mark.parametrize("b,n,s", [(1, 1, 7), (2, 3, 5), (3, 17, 23), (5, 2, 1)])
def test_onnx_equals_torch_for_several_b_n(exported, b, n, s):
    model, path = exported
    scorer = OnnxScorer(path)
    assert scorer.providers[-1] == "CPUExecutionProvider"
    hidden, valid, cand = random_inputs(b, n, s, 40, STEPS, A_IN, torch.float32, torch.device("cpu"), seed=b + n + s)
    out = scorer.score(hidden, valid, cand)
    ref = TorchScorer(model).score(hidden, valid, cand)
    assert out.shape == (b, n) and out.dtype == torch.float32
    assert float((out - ref).abs().max()) <= 1e-4


def test_onnx_graph_has_dynamic_b_n_s(exported):
    import onnx

    graph = onnx.load(str(exported[1])).graph
    dims = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in graph.input}
    assert dims["candidates"][2:] == [STEPS, A_IN]
    assert all(isinstance(d, str) for d in (dims["hidden"][0], dims["hidden"][1], dims["candidates"][1]))
    assert dims["hidden"][0] == dims["valid"][0] == dims["candidates"][0]


def test_onnx_scorer_names_the_wrong_shape(exported):
    scorer = OnnxScorer(exported[1])
    with pytest.raises(ValueError, match=r"candidates must be \[B, N, 6, 9\]"):
        scorer.score(torch.zeros(1, 3, 40), torch.ones(1, 3, dtype=torch.bool), torch.zeros(1, 2, 8, 9))
    with pytest.raises(FileNotFoundError, match="energy-rerank export"):
        OnnxScorer(exported[1].with_name("missing.onnx"))


def test_cli_export_writes_and_checks(tmp_path, capsys):
    from energy_rerank.cli import main

    torch.manual_seed(1)
    bundle = EnergyModel(EnergyConfig(context_dim=24, hidden=32, heads=2, chunk_len=4)).save_pretrained(tmp_path / "b")
    rc = main(["export", "--onnx", str(tmp_path / "e.onnx"), "--energy", str(bundle)])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert (tmp_path / "e.onnx").is_file() and "max |onnxruntime - torch|" in out
