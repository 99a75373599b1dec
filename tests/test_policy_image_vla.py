"""Image VLAs read the OpenVLA-OFT way: tiny random PaliGemma and Idefics3 (SmolVLM) checkpoints
with their own processors, bundled by `policy-bundle image-vla`, through cache-features, train
and a real gRPC server; the L1 head reads the hidden states one position left of the action
placeholders (OFT's shift), in the image adapter and in the text-only HFAdapter alike.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from energy_rerank.cli import main
from energy_rerank.data import load_data
from energy_rerank.policy.base import Observation
from energy_rerank.policy.image_vla import ImageVLA
from energy_rerank.policy.loading import load_policy
from energy_rerank.policy.tiny import write_tiny_demos, write_tiny_idefics3, write_tiny_paligemma
from energy_rerank.training.cache import FeatureCache

H, A, LAYERS, D = 8, 7, 2, 32
ARCHS = {"paligemma": write_tiny_paligemma, "idefics3": write_tiny_idefics3}


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("vla")
    out = {"root": root, "demos": write_tiny_demos(root / "demos.hdf5", image_size=32, steps=20)}
    for arch, write in ARCHS.items():
        ckpt = write(root / arch, hidden=D, layers=LAYERS)
        bundle = root / f"{arch}_policy"
        assert main(["policy-bundle", "image-vla", "--checkpoint", str(ckpt), "--data", str(out["demos"]),
                     "--cameras", "agentview", "eye_in_hand", "--chunk-len", str(H), "--head-hidden", "32",
                     "--out", str(bundle)]) == 0  # fmt: skip
        out[arch], out[f"{arch}_policy"] = ckpt, bundle
    return out


def _observations(files: dict[str, Path], n: int = 3) -> list[Observation]:
    windows = load_data([str(files["demos"])], H, stride=7, images=True).windows
    obs = windows.observations[:n]
    obs[1].instruction = "put it down"  # prompts of different lengths: left padding in play
    return obs


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_one_chunk_per_layer_from_a_real_processor(files: dict[str, Path], arch: str) -> None:
    policy = load_policy(files[f"{arch}_policy"])
    assert isinstance(policy, ImageVLA)
    obs = _observations(files)
    p = policy.propose(obs)
    d = policy.description
    assert d.num_layers == LAYERS == policy.model.config.get_text_config().num_hidden_layers
    assert p.layer_actions.shape == (3, LAYERS, H, A) and torch.equal(p.base, p.layer_actions[:, -1])
    assert bool(torch.isfinite(p.layer_actions).all())
    s = p.context.shape[1]
    assert p.context.shape == (3, s, D)
    assert not bool(p.valid[:, -(H + 1) :].any())  # placeholders and the stop token are not context
    assert int(p.valid[0].sum()) > int(p.valid[1].sum())  # the shorter prompt is left-padded
    assert (d.cameras, d.image_size) == (("agentview", "eye_in_hand"), (32, 32))
    with pytest.raises(ValueError, match="camera 'eye_in_hand' is missing"):
        policy.propose([Observation(images={"agentview": np.zeros((32, 32, 3), np.uint8)}, instruction="x")])


def _signal_check(propose: Any, inject: Any, first: int, count: int, b: int, s: int, head: nn.Module) -> None:
    """Hidden states where only the OFT positions [first - 1, first - 1 + count) carry the signal:
    the head's chunks are head(signal); the last placeholder (not read) changes nothing; the last
    prompt token (read) changes the first step."""
    gen = torch.Generator().manual_seed(0)
    signal = torch.randn(LAYERS, b, count, D, generator=gen)
    hidden = [torch.zeros(b, s, D) for _ in range(LAYERS + 1)]
    for layer in range(LAYERS):
        hidden[layer + 1][:, first - 1 : first - 1 + count] = signal[layer]
    inject(hidden)
    got = propose().layer_actions  # [B, L, H, A]
    with torch.no_grad():
        want = head(signal.reshape(LAYERS, b, H, -1)).transpose(0, 1)  # [B, L, H, A]
    torch.testing.assert_close(got, want)
    hidden[-1][:, first + count - 1] += 100.0  # the last placeholder: OFT never reads it
    inject(hidden)
    torch.testing.assert_close(propose().layer_actions, want)
    hidden[-1][:, first - 1] += 100.0  # the last prompt token: OFT's first read position
    inject(hidden)
    moved = propose().layer_actions
    assert not torch.allclose(moved[:, -1, 0], want[:, -1, 0]) and torch.allclose(moved[:, -1, 1:], want[:, -1, 1:])


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_image_head_reads_the_positions_openvla_oft_reads(files: dict[str, Path], arch: str, monkeypatch) -> None:
    policy = load_policy(files[f"{arch}_policy"])
    assert isinstance(policy, ImageVLA)
    obs = _observations(files)
    kwargs, valid, first = policy.build_inputs(obs)
    t = policy.config.action_tokens
    assert (kwargs["input_ids"][:, first : first + t.count] == t.token_id).all()
    assert bool(valid[:, first - 1].all()) and not bool(valid[:, first:].any())  # first - 1: the last prompt token
    b, s = kwargs["input_ids"].shape
    box: dict[str, tuple[torch.Tensor, ...]] = {}
    monkeypatch.setattr(policy, "hidden_states", lambda kw: box["hidden"])

    def inject(hidden: list[torch.Tensor]) -> None:
        box["hidden"] = tuple(h.clone() for h in hidden)

    _signal_check(lambda: policy.propose(obs), inject, first, t.count, b, s, policy.head)


class _DesignedBackbone(nn.Module):
    """A text backbone whose hidden states are given: the HFAdapter's head read, isolated."""

    def __init__(self) -> None:
        super().__init__()
        self.config = SimpleNamespace(hidden_size=D, vocab_size=300, num_hidden_layers=LAYERS)
        self.hidden: tuple[torch.Tensor, ...] = ()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, output_hidden_states: bool = True,
                return_dict: bool = True) -> SimpleNamespace:  # fmt: skip
        assert self.hidden[0].shape[:2] == input_ids.shape
        return SimpleNamespace(hidden_states=self.hidden)


def test_hf_adapter_head_reads_the_positions_openvla_oft_reads() -> None:
    from energy_rerank.policy.hf_adapter import ActionTokens, HFAdapter, HFAdapterConfig

    backbone = _DesignedBackbone()
    cfg = HFAdapterConfig(backbone="x", hidden_size=D, chunk_len=H,
                          action_tokens=ActionTokens(count=H, token_id=299, trailing=1, trailing_id=258))  # fmt: skip
    adapter = HFAdapter(cfg, backbone)
    obs = [Observation(instruction="pick up the bowl"), Observation(instruction="go")]
    kwargs, valid = adapter.build_inputs(obs)
    b, s = kwargs["input_ids"].shape
    first = s - 1 - H
    assert (kwargs["input_ids"][:, first : first + H] == 299).all() and bool(valid[:, first - 1].all())

    def inject(hidden: list[torch.Tensor]) -> None:
        backbone.hidden = tuple(h.clone() for h in hidden)

    _signal_check(lambda: adapter.propose(obs), inject, first, H, b, s, adapter.head)


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_image_vla_caches_trains_and_serves(files: dict[str, Path], arch: str, tmp_path: Path) -> None:
    from energy_rerank.server.testing import ServerProcess
    from energy_rerank_client import RerankClient

    bundle, demos = files[f"{arch}_policy"], files["demos"]
    cache = tmp_path / "features"
    assert main(["cache-features", "--policy", str(bundle), "--data", str(demos), "--stride", "3",
                 "--batch-size", "8", "--out", str(cache)]) == 0  # fmt: skip
    batch = FeatureCache(cache).load_all()
    assert batch.layer_actions.shape[1:] == (LAYERS, H, A) and batch.context.shape[2] == D
    energy = tmp_path / "energy"
    assert main(["train", "--preset", "tiny-reference", "--cache", str(cache), "--steps", "3", "--batch-size", "4",
                 "--out", str(energy)]) == 0  # fmt: skip
    obs = load_data([str(demos)], H, images=True).windows.observations[0]
    with ServerProcess(["--policy", str(bundle), "--energy", str(energy), "--backend", "torch"]) as server:
        with RerankClient(server.address, timeout=60.0) as client:
            r = client.select(obs.images, instruction=obs.instruction, num_candidates=8, seed=0, return_candidates=True)
    assert r.chunk.shape == (H, A) and np.isfinite(r.chunk).all() and not r.fallback
    assert r.energies.shape == (8,) and 0 <= r.index < 8 and r.candidates is not None
    np.testing.assert_allclose(r.chunk, r.candidates[r.index], atol=1e-6)


def test_bundle_refuses_a_mismatched_config(files: dict[str, Path], tmp_path: Path) -> None:
    from safetensors.torch import save_file

    base = ["policy-bundle", "image-vla", "--checkpoint", str(files["paligemma"]), "--stats",
            str(files["paligemma_policy"] / "stats.json")]  # fmt: skip
    from energy_rerank.nn import MLPResNet

    head = {k: v.contiguous() for k, v in MLPResNet(2, D, 256, A).state_dict().items()}
    save_file({**head, "fc1.weight": torch.zeros(3, 3)}, str(tmp_path / "head.safetensors"))  # one wrong shape
    cases = {
        "num_layers=3 but the language model has 2 layers": ["--num-layers", "3"],
        "hidden_size=64 but the language model's hidden_size is 32": ["--hidden-size", "64"],
        "action_tokens.token_id=99999 is outside the vocabulary": ["--token-id", "99999"],
        "context_layer=5 must index the 3 hidden states": ["--context-layer", "5"],
        "--action-dim 6, but the statistics have 7 action dims": ["--action-dim", "6", "--gripper-dims", "5"],
        "fc1.weight: config implies shape (256, 32), weights have (3, 3)": ["--head", str(tmp_path / "head.safetensors")],
    }
    for message, extra in cases.items():
        with pytest.raises(SystemExit) as e:
            main([*base, *extra, "--out", str(tmp_path / "x")])
        assert message in str(e.value), (message, str(e.value))
    with pytest.raises(SystemExit, match="holds no transformers config.json"):
        main([*base[:3], str(tmp_path / "nowhere"), *base[4:], "--out", str(tmp_path / "x")])
    assert not (tmp_path / "x").exists()
