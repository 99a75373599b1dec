"""HFAdapter: a tiny random transformers backbone saved to disk, loaded offline, proposing chunks."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaModel

from energy_rerank.checkpoint import BundleError
from energy_rerank.policy.base import Observation
from energy_rerank.policy.hf_adapter import ActionTokens, HFAdapter, HFAdapterConfig, build_head
from energy_rerank.policy.loading import load_policy

D, LAYERS, VOCAB, ACTION_ID = 32, 2, 300, 299


@pytest.fixture(scope="module")
def backbone_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=D,
        intermediate_size=64,
        num_hidden_layers=LAYERS,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=512,
    )
    path = tmp_path_factory.mktemp("hf") / "backbone"
    LlamaModel(cfg).save_pretrained(path)
    return path


OBS = [
    Observation(instruction="pick up the red block"),
    Observation(instruction="put the bowl on the plate", lowdim=None),
]


@pytest.mark.parametrize("tokens_per_step", [1, 7])  # one token per step, or OpenVLA-OFT's one per dim
def test_adapter_bundle_loads_offline_and_proposes(
    backbone_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tokens_per_step: int
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = HFAdapterConfig(
        backbone=str(backbone_dir),
        hidden_size=D,
        action_tokens=ActionTokens(
            count=8 * tokens_per_step,
            tokens_per_step=tokens_per_step,
            token_id=ACTION_ID,
            trailing=1,
            trailing_id=258,
        ),
    )
    HFAdapter(cfg, LlamaModel.from_pretrained(backbone_dir), build_head(cfg)).save(tmp_path / "adapter")
    policy = load_policy(tmp_path / "adapter")
    assert isinstance(policy, HFAdapter)
    p = policy.propose(OBS)
    s = p.context.shape[1]
    assert p.context.shape == (2, s, D)
    assert p.layer_actions.shape == (2, LAYERS, 8, 7) and torch.equal(p.base, p.layer_actions[:, -1])
    assert bool(torch.isfinite(p.layer_actions).all())
    # valid = prompt tokens only: the longer prompt fills the row, the shorter one is left-padded
    prompt_len = [len(policy._prompt_ids(o, i)) for i, o in enumerate(OBS)]
    assert p.valid.sum(1).tolist() == prompt_len
    assert not bool(p.valid[:, -(8 * tokens_per_step + 1) :].any())
    d = policy.description
    assert (d.hidden_size, d.num_layers, d.chunk_len, d.action_dim) == (D, LAYERS, 8, 7)


def test_relative_backbone_path(backbone_dir: Path) -> None:
    bundle = backbone_dir.parent / "adapter"
    cfg = HFAdapterConfig(
        backbone="../backbone", hidden_size=D, action_tokens=ActionTokens(count=8, token_id=ACTION_ID)
    )
    HFAdapter(cfg, LlamaModel.from_pretrained(backbone_dir)).save(bundle)
    assert load_policy(bundle).propose(OBS[:1]).base.shape == (1, 8, 7)


def test_context_layer(backbone_dir: Path) -> None:
    backbone = LlamaModel.from_pretrained(backbone_dir)
    cfg = HFAdapterConfig(
        backbone=str(backbone_dir), hidden_size=D, action_tokens=ActionTokens(count=8, token_id=ACTION_ID)
    )
    torch.manual_seed(0)
    head = build_head(cfg)
    last = HFAdapter(cfg, backbone, head).propose(OBS)
    first = HFAdapter(dataclasses.replace(cfg, context_layer=0), backbone, head).propose(OBS)
    assert torch.equal(first.layer_actions, last.layer_actions)  # same chunks, another context
    ids = HFAdapter(cfg, backbone, head).build_inputs(OBS)[0]["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(first.context, backbone.embed_tokens(ids).float())  # layer 0 = embeddings
    with pytest.raises(ValueError, match="context_layer"):
        HFAdapter(dataclasses.replace(cfg, context_layer=LAYERS + 1), backbone, head)


def test_wrong_action_token_description_fails_clearly(backbone_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"action_tokens.count=7 must equal chunk_len \* tokens_per_step"):
        HFAdapterConfig(backbone="x", hidden_size=D, action_tokens=ActionTokens(count=7))
    backbone = LlamaModel.from_pretrained(backbone_dir)
    with pytest.raises(ValueError, match=r"action_tokens.token_id=400 is outside the backbone's vocabulary"):
        HFAdapter(
            HFAdapterConfig(backbone="x", hidden_size=D, action_tokens=ActionTokens(token_id=400)), backbone
        )
    with pytest.raises(ValueError, match="config.hidden_size=64 but the backbone's hidden_size is 32"):
        HFAdapter(HFAdapterConfig(backbone="x", hidden_size=64), backbone)
    # a bundle whose head was built for one token per step, described as one token per action dim
    good = HFAdapterConfig(backbone=str(backbone_dir), hidden_size=D, action_tokens=ActionTokens(count=8))
    HFAdapter(good, backbone).save(tmp_path / "adapter")
    meta_path = tmp_path / "adapter" / "config.json"
    meta_path.write_text(
        meta_path.read_text()
        .replace('"count": 8', '"count": 56')
        .replace('"tokens_per_step": 1', '"tokens_per_step": 7')
    )
    with pytest.raises(BundleError, match="fc1.weight: config implies shape"):
        load_policy(tmp_path / "adapter")


def test_missing_backbone_is_a_clear_error(tmp_path: Path) -> None:
    cfg = HFAdapterConfig(backbone="nowhere", hidden_size=D, action_tokens=ActionTokens(count=8))
    HFAdapter(
        cfg,
        LlamaModel(
            LlamaConfig(
                vocab_size=VOCAB,
                hidden_size=D,
                num_hidden_layers=1,
                num_attention_heads=4,
                intermediate_size=8,
            )
        ),
    ).save(tmp_path / "a")
    with pytest.raises(BundleError, match="holds no transformers config.json"):
        load_policy(tmp_path / "a")
