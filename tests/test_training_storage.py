"""Feature cache shards and train-state checkpoints: safetensors + JSON, atomic, exact round trips."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from energy_rerank.training.batching import EpochBatches, split_holdout
from energy_rerank.training.cache import FeatureCache, write_feature_cache
from energy_rerank.training.checkpointing import latest_checkpoint, load_checkpoint, save_checkpoint
from energy_rerank.training.synthetic_features import SyntheticFeatureConfig, make_synthetic_features

SYN = SyntheticFeatureConfig()


def test_cache_roundtrip_across_shards(tmp_path: Path) -> None:
    data = make_synthetic_features(23, SYN, seed=0)
    parts = [data.select(slice(i, i + 5)) for i in range(0, 23, 5)]
    out = write_feature_cache(parts, tmp_path / "cache", shard_size=7, context_dtype=torch.float32, meta={"k": 1})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache"]  # no temporary directory left behind
    cache = FeatureCache(out)
    assert len(cache) == 23 and cache.num_shards == 4 and cache.meta == {"k": 1}
    assert not list(out.glob("*.pkl")) and not list(out.glob("*.pt"))
    idx = torch.tensor([22, 0, 7, 6, 13, 14, 1])
    got = cache.gather(idx)
    want = data.select(idx)
    for name, t in want.tensors().items():
        assert torch.equal(getattr(got, name), t), name
    with pytest.raises(IndexError):
        cache.gather([23])
    with pytest.raises(FileExistsError):
        write_feature_cache(parts, out)


def test_cache_fp16_context_is_close(tmp_path: Path) -> None:
    data = make_synthetic_features(8, SYN, seed=1)
    cache = FeatureCache(write_feature_cache([data], tmp_path / "c16"))  # default: context stored in fp16
    torch.testing.assert_close(cache.load_all().context, data.context, rtol=1e-3, atol=1e-3)
    assert torch.equal(cache.load_all().expert, data.expert)  # actions stay fp32


def test_checkpoint_roundtrip_types_and_rotation(tmp_path: Path) -> None:
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), betas=(0.8, 0.9))
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    state = {"model": model.state_dict(), "optim": opt.state_dict(), "rng": torch.get_rng_state(), "n": 3}
    for step in (10, 20, 30):
        save_checkpoint(tmp_path, step, state, keep=2)
    assert latest_checkpoint(tmp_path) == tmp_path / "step_00000030"
    assert sorted(p.name for p in tmp_path.glob("step_*")) == ["step_00000020", "step_00000030"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    step, loaded = load_checkpoint(latest_checkpoint(tmp_path))  # type: ignore[arg-type]
    assert step == 30 and loaded["n"] == 3
    assert list(loaded["optim"]["state"]) == [0, 1]  # int keys survive
    assert loaded["optim"]["param_groups"][0]["betas"] == (0.8, 0.9)  # tuples survive
    opt2 = torch.optim.AdamW(torch.nn.Linear(3, 2).parameters())
    opt2.load_state_dict(loaded["optim"])
    assert torch.equal(loaded["rng"], state["rng"])
    with pytest.raises(TypeError, match="without pickle"):
        save_checkpoint(tmp_path, 40, {"bad": object()})
    assert latest_checkpoint(tmp_path) == tmp_path / "step_00000030"  # a failed write leaves the old one


def test_batch_order_is_a_function_of_seed_and_step_and_ranks_disjoint() -> None:
    train, held = split_holdout(100, 0.2, seed=0)
    assert len(held) == 20 and not set(train.tolist()) & set(held.tolist())
    ranges = [(0, 40), (40, 100)]
    a = EpochBatches(train, ranges, batch_size=8, seed=1)
    b = EpochBatches(train, ranges, batch_size=8, seed=1)
    assert torch.equal(a.batch(17), b.batch(17)) and torch.equal(a.batch(3), b.batch(3))
    r0 = EpochBatches(train, ranges, batch_size=4, seed=1, rank=0, world=2)
    r1 = EpochBatches(train, ranges, batch_size=4, seed=1, rank=1, world=2)
    for step in range(r0.per_epoch):
        assert not set(r0.batch(step).tolist()) & set(r1.batch(step).tolist())


def test_train_configs_roundtrip_through_json() -> None:
    import json

    from energy_rerank.config import config_from_dict, config_to_dict
    from energy_rerank.training.config import PRESETS, TrainConfig

    for name, cfg in PRESETS.items():
        again = config_from_dict(TrainConfig, json.loads(json.dumps(config_to_dict(cfg))))
        assert again == cfg, name
    with pytest.raises(ValueError, match="mode"):
        TrainConfig(mode="both")  # type: ignore[arg-type]
