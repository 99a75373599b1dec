"""Bundles: save -> load gives identical energies; a bundle whose config and weights disagree fails by name."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from energy_rerank import EnergyConfig, EnergyModel, NormStats
from energy_rerank.checkpoint import BundleError, load_bundle

CFG = EnergyConfig(context_dim=24, hidden=32, heads=2, chunk_len=4, action_dim=7)


def _energies(model: EnergyModel, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    hidden, actions = torch.randn(2, 5, 24, generator=g), torch.randn(2, 3, 4, 7, generator=g)
    with torch.no_grad():
        return model.eval().score(model.encode_context(hidden), actions)


def test_round_trip_identical(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = EnergyModel(CFG)
    stats = NormStats.from_data(np.random.default_rng(0).normal(size=(100, 7)), binary_dims=(6,))
    model.save_pretrained(tmp_path / "head", stats=stats)
    assert sorted(p.name for p in (tmp_path / "head").iterdir()) == ["config.json", "model.safetensors", "stats.json"]
    loaded = EnergyModel.from_pretrained(tmp_path / "head")
    assert loaded.config == CFG
    assert torch.equal(_energies(model), _energies(loaded))
    _, stats2 = load_bundle(tmp_path / "head", "energy_model", EnergyConfig, EnergyModel)
    assert stats2 == stats


def test_overwrite_is_atomic_and_leaves_no_temp(tmp_path: Path) -> None:
    EnergyModel(CFG).save_pretrained(tmp_path / "head")
    EnergyModel(CFG).save_pretrained(tmp_path / "head")
    assert [p.name for p in tmp_path.iterdir()] == ["head"]


def test_config_weight_mismatch_is_named(tmp_path: Path) -> None:
    EnergyModel(CFG).save_pretrained(tmp_path / "head")
    meta = json.loads((tmp_path / "head" / "config.json").read_text())
    meta["config"]["hidden"] = 64  # the weights were written with hidden = 32
    (tmp_path / "head" / "config.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match=r"config implies shape .*weights have") as err:
        EnergyModel.from_pretrained(tmp_path / "head")
    assert "action_linear.fc1.bias" in str(err.value) and "more" in str(err.value)


def test_missing_and_unknown_keys_are_named(tmp_path: Path) -> None:
    EnergyModel(CFG).save_pretrained(tmp_path / "head")
    meta = json.loads((tmp_path / "head" / "config.json").read_text())
    meta["config"]["head_blocks"] = 3  # config asks for a block the weights lack
    (tmp_path / "head" / "config.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match=r"missing weight prediction_head\.mlp_resnet_blocks\.2"):
        EnergyModel.from_pretrained(tmp_path / "head")
    meta["config"] = {**meta["config"], "head_blocks": 2, "colour": "red"}
    (tmp_path / "head" / "config.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="unknown config keys \\['colour'\\]"):
        EnergyModel.from_pretrained(tmp_path / "head")


def test_wrong_kind_and_not_a_bundle(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="not a bundle"):
        EnergyModel.from_pretrained(tmp_path)
    EnergyModel(CFG).save_pretrained(tmp_path / "head")
    with pytest.raises(BundleError, match="bundle kind is 'energy_model'"):
        load_bundle(tmp_path / "head", "reference_policy", EnergyConfig, EnergyModel)


def test_no_pickle_in_bundle(tmp_path: Path) -> None:
    EnergyModel(CFG).save_pretrained(tmp_path / "head")
    raw = (tmp_path / "head" / "model.safetensors").read_bytes()
    assert b"\x80\x04" not in raw[:16] and raw[8:9] == b"{"  # safetensors: u64 header size + JSON
