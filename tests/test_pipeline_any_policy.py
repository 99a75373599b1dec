"""One pipeline for any policy: cache-features -> train -> serve through the Proposer interface.

A tiny random transformers backbone in an `hf_adapter` bundle and the reference VLA go through
the same three commands on a LIBERO-format HDF5 file, and the served head answers over a real
gRPC server on loopback. The offline evaluation's choice equals the server's for the same
observation, seed and margin (one selection rule), and feature caching under torchrun with two
gloo ranks writes the same cache as one process.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from energy_rerank.cli import main
from energy_rerank.data import load_data
from energy_rerank.policy.loading import load_policy
from energy_rerank.training.cache import FeatureCache

DATA = Path(__file__).parent / "data" / "libero_object_task0_2demos.hdf5"


def _hf_adapter_bundle(directory: Path) -> Path:
    from transformers import LlamaConfig, LlamaModel

    from energy_rerank.policy.hf_adapter import ActionTokens, HFAdapter, HFAdapterConfig

    torch.manual_seed(0)
    backbone = LlamaModel(
        LlamaConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512)
    )  # fmt: skip
    backbone.save_pretrained(directory / "backbone")
    windows = load_data([str(DATA)], chunk_len=8).windows
    stats = windows.norm_stats(lowdim=False, state=False, binary_dims=(6,))
    cfg = HFAdapterConfig(
        backbone="../backbone", hidden_size=32, action_tokens=ActionTokens(count=8, token_id=299), max_prompt_len=48
    )
    return HFAdapter(cfg, backbone, stats=stats).save(directory / "policy")


def _reference_bundle(directory: Path) -> Path:
    out = directory / "policy"
    argv = ["train-policy", "--data", str(DATA), "--steps", "2", "--batch-size", "8", "--stride", "10"]
    assert main([*argv, "--max-text-len", "16", "--no-progress", "--out", str(out)]) == 0
    return out


@pytest.mark.parametrize("kind", ["hf_adapter", "reference_policy"])
def test_any_policy_bundle_caches_trains_and_serves(kind: str, tmp_path: Path, monkeypatch) -> None:
    from energy_rerank.server.testing import ServerProcess
    from energy_rerank_client import RerankClient

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    policy_dir = _hf_adapter_bundle(tmp_path) if kind == "hf_adapter" else _reference_bundle(tmp_path)
    policy = load_policy(policy_dir)
    assert type(policy).__name__ == ("HFAdapter" if kind == "hf_adapter" else "ReferenceVLA")

    cache = tmp_path / "features"
    argv = ["cache-features", "--policy", str(policy_dir), "--data", str(DATA), "--stride", "5"]
    assert main([*argv, "--batch-size", "8", "--out", str(cache)]) == 0
    features = FeatureCache(cache)
    windows = load_data([str(DATA)], 8, stride=5).windows
    assert len(features) == len(windows) and features.meta["episodes"] == 2
    assert features.index["shapes"]["context"][-1] == policy.description.hidden_size
    batch = features.load_all()
    assert batch.layer_actions.shape[1] == policy.description.num_layers
    expected = torch.from_numpy(windows.chunks)
    torch.testing.assert_close(batch.expert, policy.stats.normalize_actions(expected))  # type: ignore[union-attr]

    energy = tmp_path / "energy"
    assert main(["train", "--preset", "tiny-reference", "--cache", str(cache), "--steps", "3", "--out", str(energy)]) == 0
    assert (energy / "model.safetensors").is_file() and (energy / "summary.json").is_file()  # --out is the bundle

    with ServerProcess(["--policy", str(policy_dir), "--energy", str(energy), "--backend", "torch"]) as server:
        with RerankClient(server.address, timeout=60.0) as client:
            obs = {"instruction": "pick up the alphabet soup and place it in the basket"}
            if policy.description.lowdim_dim:
                obs["lowdim"] = windows.observations[0].lowdim  # type: ignore[assignment]
            r = client.select(**obs, num_candidates=8, seed=0)  # type: ignore[arg-type]
    assert r.chunk.shape == (8, 7) and np.isfinite(r.chunk).all()
    assert r.energies.shape == (8,) and 0 <= r.index < 8


def test_offline_choice_equals_the_served_choice(tmp_path: Path) -> None:
    """Same observation, seed and margin: `eval offline`'s chunk is the server's chunk."""
    from energy_rerank.candidates import CandidateSampler
    from energy_rerank.checkpoint import read_head_record
    from energy_rerank.energy import EnergyModel
    from energy_rerank.evaluation.offline import OfflineConfig, chosen_chunks
    from energy_rerank.scoring import TorchScorer
    from energy_rerank.server.config import ServerConfig
    from energy_rerank.server.models import load_reranker
    from energy_rerank.server.testing import InProcessServer, write_tiny_bundles
    from energy_rerank_client import RerankClient

    policy_dir, energy_dir = write_tiny_bundles(tmp_path)
    policy = load_policy(policy_dir)
    scorer = TorchScorer(EnergyModel.from_pretrained(energy_dir))
    sampler = CandidateSampler.for_policy(policy, read_head_record(energy_dir).sampler)
    windows = load_data(["synthetic:episodes=2,seed=5,image_size=32"], 8, stride=3).windows  # 16 windows
    cfg = OfflineConfig(seed=100, batch=8)
    n = 16
    _, plain = chosen_chunks(windows, policy, scorer, sampler, n, 0.0, cfg)
    assert (plain != 0).any()  # a random head switches at margin 0: the comparison covers both cases
    reranker = load_reranker(ServerConfig(policy_path=policy_dir, energy_path=energy_dir, backend="torch"))
    with InProcessServer(reranker) as server, RerankClient(server.address, timeout=30.0) as client:
        for margin in (0.0, 0.05, float("inf")):
            chunks, index = chosen_chunks(windows, policy, scorer, sampler, n, margin, cfg)
            for i, o in enumerate(windows.observations):
                r = client.select(o.images, None, lowdim=o.lowdim, instruction=o.instruction,
                                  num_candidates=n, seed=cfg.seed + i, switch_margin=margin)  # fmt: skip
                assert r.index == index[i], (margin, i)
                np.testing.assert_allclose(r.chunk, chunks[i], atol=1e-5)
        assert (index == 0).all()  # margin inf: always the policy's chunk


def test_selection_rule_lives_in_one_module() -> None:
    """argmin + margin appear only in energy_rerank/selection.py among the places that choose."""
    root = Path(__file__).resolve().parents[1]
    for rel in ("energy_rerank/reranker.py", "energy_rerank/evaluation/offline.py",
                "energy_rerank/evaluation/margin.py", "training/rerank_eval.py", "server/servicer.py"):  # fmt: skip
        text = (root / rel).read_text()
        assert "argmin(" not in text and "multinomial(" not in text, rel
        assert "from energy_rerank.selection import" in text, rel


@pytest.mark.slow
def test_torchrun_two_ranks_cache_equals_one_process(tmp_path: Path) -> None:
    policy_dir = _reference_bundle(tmp_path)
    data = ["--data", str(DATA), str(DATA)]  # two sources: episode indices renumbered across them
    common = ["cache-features", "--policy", str(policy_dir), *data, "--stride", "4", "--batch-size", "8"]
    common += ["--shard-size", "16"]
    assert main([*common, "--out", str(tmp_path / "one")]) == 0
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "energy_rerank.cli", *common, "--out", str(tmp_path / "two")]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    one, two = FeatureCache(tmp_path / "one"), FeatureCache(tmp_path / "two")
    meta_one, meta_two = one.meta, two.meta
    assert meta_two.pop("ranks") == 2 and meta_one == meta_two
    assert len(one) == len(two) and {s["file"][:7] for s in two.index["shards"]} == {"rank000", "rank001"}
    a, b = one.load_all(), two.load_all()
    for name, t in a.tensors().items():
        torch.testing.assert_close(getattr(b, name), t, atol=1e-5, rtol=1e-5, msg=name)
    assert not list(tmp_path.glob(".two*"))  # no staging left behind


def test_version_follows_the_checkpoint_a_policy_bundle_points_at(tmp_path: Path) -> None:
    """An hf_adapter bundle's weights live in the backbone directory: new backbone weights are a new
    version; a training run's files beside an energy head are not."""
    from transformers import LlamaModel

    from energy_rerank.server.models import bundle_digest
    from energy_rerank.server.testing import write_tiny_bundles

    policy_dir = _hf_adapter_bundle(tmp_path)
    before = bundle_digest(policy_dir)
    assert bundle_digest(policy_dir) == before  # deterministic
    backbone = LlamaModel.from_pretrained(tmp_path / "backbone")
    with torch.no_grad():
        backbone.norm.weight.add_(1.0)
    backbone.save_pretrained(tmp_path / "backbone")
    assert bundle_digest(policy_dir) != before

    _, head = write_tiny_bundles(tmp_path / "tiny")
    version = bundle_digest(head)
    (head / "summary.json").write_text("{}")
    (head / "checkpoints").mkdir()
    assert bundle_digest(head) == version
