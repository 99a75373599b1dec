"""EnergyTrainer on feature stores: NaN skip, exact resume, monitor-only, the CLI's debug preset."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from energy_rerank.checkpoint import read_head_record
from energy_rerank.cli import main as cli_main
from energy_rerank.energy import EnergyModel
from energy_rerank.training.cache import FeatureBatch, InMemoryFeatures
from energy_rerank.training.config import TrainConfig, preset
from energy_rerank.training.energy_trainer import EnergyTrainer, synthetic_store


def _debug(**changes) -> TrainConfig:
    cfg = preset("debug")
    # dropout on: resume must also restore the random stream, not only weights and moments
    return cfg.replace(energy=dataclasses.replace(cfg.energy, pe_dropout=0.2), **changes)


def _weights(t: EnergyTrainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in t.model.state_dict().items()}


class NaNOnce:
    """A feature store whose `poison_at`-th gather returns a batch with one NaN in the context."""

    def __init__(self, inner: InMemoryFeatures, poison_at: int) -> None:
        self.inner, self.poison_at, self.calls = inner, poison_at, 0

    def __len__(self) -> int:
        return len(self.inner)

    def shard_ranges(self) -> list[tuple[int, int]]:
        return self.inner.shard_ranges()

    def gather(self, indices: torch.Tensor) -> FeatureBatch:
        batch = self.inner.gather(indices)
        self.calls += 1
        if self.calls == self.poison_at:
            batch.context = batch.context.clone()
            batch.context[0, 0, 0] = float("nan")
        return batch


def test_nan_batch_is_skipped_weights_bitwise_unchanged_training_goes_on(tmp_path: Path) -> None:
    cfg = _debug(steps=8, eval_every=1000, checkpoint_every=0)
    store = NaNOnce(synthetic_store(cfg), poison_at=4)
    t = EnergyTrainer(cfg, tmp_path, features=store)
    for step in range(3):
        t.train_step(step)
    before = _weights(t)
    moments = {k: v.clone() for k, v in t.energy_opt.optimizer.state[t.model.cross.in_proj_weight].items()}
    m = t.train_step(3)  # the poisoned batch
    assert m["skip_rate"] == 1.0
    assert t.energy_opt.skipped_steps == 1 and t.energy_opt.applied_steps == 3
    after = _weights(t)
    assert all(torch.equal(before[k], after[k]) for k in before), "skipped step changed the weights"
    state = t.energy_opt.optimizer.state[t.model.cross.in_proj_weight]
    assert all(torch.equal(v, state[k]) for k, v in moments.items())
    for step in range(4, 8):
        assert t.train_step(step)["skip_rate"] == 0.0
    assert t.energy_opt.applied_steps == 7
    assert not torch.equal(before["cross.in_proj_weight"], t.model.state_dict()["cross.in_proj_weight"])


def test_stop_and_resume_equals_uninterrupted(tmp_path: Path) -> None:
    cfg = _debug(steps=24, eval_every=10, checkpoint_every=10)
    full = EnergyTrainer(cfg, tmp_path / "full")
    full.fit()
    first = EnergyTrainer(cfg, tmp_path / "split")
    first.fit(stop_after=13)
    assert first.step == 13
    second = EnergyTrainer(cfg, tmp_path / "split")  # a fresh process would do exactly this
    second.fit(resume=True)
    assert second.step == 24
    a, b = _weights(full), _weights(second)
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ from the uninterrupted run"
    assert second.energy_opt.state_dict()["applied_steps"] == full.energy_opt.state_dict()["applied_steps"]
    moments_a = full.energy_opt.optimizer.state_dict()["state"]
    moments_b = second.energy_opt.optimizer.state_dict()["state"]
    assert all(torch.equal(moments_a[i]["exp_avg_sq"], moments_b[i]["exp_avg_sq"]) for i in moments_a)


def test_monitor_only_trains_nothing(tmp_path: Path) -> None:
    cfg = _debug(steps=5, mode="monitor-only", eval_every=5, log_every=1)
    t = EnergyTrainer(cfg, tmp_path)
    before = _weights(t)
    summary = t.fit()
    assert t.energy_opt is None and not t.trainable_parameters()
    assert all(torch.equal(before[k], v) for k, v in _weights(t).items())
    losses = [h["train/loss"] for h in summary["history"] if "train/loss" in h]
    assert losses and all(torch.isfinite(torch.tensor(losses)))  # energy computed and logged


def test_cli_debug_preset_writes_a_loadable_bundle(tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    assert cli_main(["train", "--debug", "--out", str(out), "--steps", "20", "--gripper-mode", "flip"]) == 0
    model = EnergyModel.from_pretrained(out)
    assert model.config == preset("debug").energy
    # the head carries the candidate sampler it was trained with; serve and eval offline default to it
    assert read_head_record(out).sampler == dataclasses.replace(preset("debug").sampler, gripper_mode="flip")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 20 and summary["skipped_steps"] == 0
    line = capsys.readouterr().out
    assert "E_pos" in line and "E_neg" in line and "rank_acc" in line and "done: 20 steps" in line
    batch = synthetic_store(preset("debug")).gather(torch.arange(4))
    with torch.no_grad():
        e = model.score(model.encode_context(batch.context, batch.valid), batch.layer_actions)
    assert e.shape == (4, batch.layer_actions.shape[1]) and bool(torch.isfinite(e).all())


def test_cli_loss_and_sampler_flags_reach_the_config(tmp_path: Path) -> None:
    import argparse

    from energy_rerank.candidates import SamplerConfig
    from energy_rerank.training.cli import add_parser, build_config
    from energy_rerank.training.losses import LOSS_PRESETS

    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())

    def config(*flags: str):
        return build_config(parser.parse_args(["train", "--preset", "tiny-reference", "--out", str(tmp_path), *flags]))

    plain = config()
    assert plain.loss == preset("tiny-reference").loss and plain.sampler == SamplerConfig()
    cfg = config("--loss", "listwise", "--sigmas", "0.02,0.05", "--gripper-mode", "flip", "--tau", "2")
    assert cfg.loss.listwise_weight == LOSS_PRESETS["listwise"].listwise_weight > 0
    assert cfg.loss.negatives == LOSS_PRESETS["listwise"].negatives and cfg.loss.tau == 2.0  # --tau still applies
    assert cfg.sampler == SamplerConfig(sigmas=(0.02, 0.05), gripper_mode="flip")
    with pytest.raises(SystemExit):
        config("--sigmas", "0.1,x")


def test_listwise_gain_weighting_leans_on_samples_with_something_to_gain() -> None:
    from energy_rerank.training.losses import LOSS_PRESETS, LossConfig, listwise_loss

    g = torch.Generator().manual_seed(0)
    expert = torch.randn(3, 4, 2, generator=g)  # [B, H, A]
    negatives = expert[:, None] + 0.3 * torch.randn(3, 5, 4, 2, generator=g)  # [B, M, H, A]
    logits = torch.randn(3, 5, generator=g)  # [B, M]
    dist = (negatives - expert[:, None]).abs().mean(dim=(2, 3))  # [B, M]
    # Sample 0's base is the expert (nothing to gain), sample 1 gains twice as much as sample 2.
    base = expert.clone()
    base[1] += dist[1].min() + 0.2
    base[2] += dist[2].min() + 0.1
    per = torch.stack([listwise_loss(logits[i : i + 1], expert[i : i + 1], negatives[i : i + 1], 0.02) for i in range(3)])
    assert torch.allclose(listwise_loss(logits, expert, negatives, 0.02), per.mean())
    assert torch.allclose(listwise_loss(logits, expert, negatives, 0.02, base=base), per.mean())  # share 0
    # Pure gain weights 0, 2, 1 (mean 1); half of it 0.5, 1.5, 1.
    pure = listwise_loss(logits, expert, negatives, 0.02, base=base, gain_share=1.0)
    assert torch.allclose(pure, (2 * per[1] + per[2]) / 3, atol=1e-5)
    half = listwise_loss(logits, expert, negatives, 0.02, base=base, gain_share=0.5)
    assert torch.allclose(half, (0.5 * per[0] + 1.5 * per[1] + per[2]) / 3, atol=1e-5)
    # No sample with any gain: the plain mean, not a division by zero.
    assert torch.allclose(listwise_loss(logits, expert, negatives, 0.02, base=expert, gain_share=1.0), per.mean())
    gain = LOSS_PRESETS["listwise-gain"]
    assert gain.listwise_gain_share == 0.5 and LOSS_PRESETS["listwise"].listwise_gain_share == 0
    assert dataclasses.replace(gain, listwise_gain_share=0.0) == LOSS_PRESETS["listwise"]
    with pytest.raises(ValueError, match="listwise_gain_share"):
        LossConfig(listwise_gain_share=1.5)
