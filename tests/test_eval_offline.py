"""Offline evaluation on the committed LIBERO-format file (2 scripted demos of libero_object/0).

No simulator needed: tiny random-weight policy and energy head, and one hand-written scorer
that knows the recorded chunk (a perfect scorer) to check the metrics can tell good from bad.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from energy_rerank.candidates import CandidateSampler, SamplerConfig
from energy_rerank.cli import main
from energy_rerank.config import EnergyConfig
from energy_rerank.energy import EnergyModel
from energy_rerank.evaluation.offline import OfflineConfig, _spearman_rows, evaluate_windows
from energy_rerank.evaluation.report import build_report
from energy_rerank.policy.reference import ReferenceConfig, ReferenceVLA
from energy_rerank.rollouts import read_hdf5
from energy_rerank.rollouts.windows import episode_windows

DATA = Path(__file__).parent / "data" / "libero_object_task0_2demos.hdf5"
H = 8


@pytest.fixture(scope="module")
def windows():
    eps = read_hdf5(DATA)
    return episode_windows(eps, chunk_len=H, stride=16), [e.task for e in eps]


def _policy(windows, with_stats: bool) -> ReferenceVLA:
    torch.manual_seed(0)
    cfg = ReferenceConfig.preset("tiny", lowdim_dim=22, chunk_len=H, max_text_len=16)
    stats = windows.norm_stats(lowdim=True, state=False, binary_dims=(6,)) if with_stats else None
    return ReferenceVLA(cfg, stats=stats)


class PerfectScorer:
    """Energy = L1 distance to the last candidate, which the evaluator sets to the recorded chunk."""

    def score(self, hidden, valid, candidates):  # [B, S, D], [B, S], [B, N, H, A] -> [B, N]
        return (candidates - candidates[:, -1:]).abs().mean(dim=(2, 3))


def test_perfect_scorer_matches_oracle_and_random_is_worse(windows):
    win, _ = windows
    policy = _policy(win, with_stats=False)  # identity normalisation: scorer L1 == robot-unit L1
    sampler = CandidateSampler.for_policy(policy, SamplerConfig(sigmas=(0.2, 0.5)))
    res = evaluate_windows(
        win, ["t"] * len(win), policy, PerfectScorer(), sampler, OfflineConfig(ns=(1, 4, 16))
    )
    for n in (4, 16):
        np.testing.assert_allclose(res.l1[f"rerank@{n}"], res.l1[f"oracle@{n}"], atol=1e-6)
        assert res.l1[f"random@{n}"].mean() > res.l1[f"rerank@{n}"].mean()
    np.testing.assert_allclose(res.l1["rerank@1"], res.l1["base"])
    assert np.nanmean(res.spearman) > 0.95
    assert (res.expert_rank == 0).all()  # nothing scores below the recorded chunk itself
    rep = build_report(res, {})
    assert rep["overall"]["oracle_gain_share@16"] == pytest.approx(1.0)


def test_cli_writes_report_and_plots(windows, tmp_path):
    win, _ = windows
    policy = _policy(win, with_stats=True)
    policy.save(tmp_path / "policy")
    EnergyModel(
        EnergyConfig(context_dim=policy.config.hidden_size, chunk_len=H, hidden=32, heads=4)
    ).save_pretrained(tmp_path / "energy")
    out = tmp_path / "eval"
    argv = ["eval", "offline", "--data", str(DATA), "--policy", str(tmp_path / "policy"), "--energy"]
    argv += [str(tmp_path / "energy"), "--out", str(out), "--n-candidates", "1,4,16", "--stride", "20", "--demos", "1"]
    assert main(argv) == 0
    rep = json.loads((out / "report.json").read_text())
    overall = rep["overall"]
    assert set(rep["per_task"]) == {"libero_object/0"} and rep["meta"]["episodes"] == 1
    assert overall["steps"] == len(range(0, read_hdf5(DATA)[1].length, 20))
    l1 = {k: v["mean"] for k, v in overall["l1"].items()}
    assert l1["rerank@1"] == pytest.approx(l1["base"]) and l1["random@1"] == pytest.approx(l1["base"])
    assert l1["oracle@16"] <= l1["oracle@4"] <= l1["oracle@1"]
    assert l1["oracle@16"] <= l1["rerank@16"]
    assert len(overall["per_dim_error"]["rerank@16"]) == 7
    assert (out / "error_vs_n.png").stat().st_size > 1000 and (out / "energy_hist.png").stat().st_size > 1000
    assert "two episodes" in rep["switch_margin"]["error"]  # one demo: nothing to calibrate on


class AntiScorer(PerfectScorer):
    """Prefers the candidates farthest from the recorded chunk: a confidently wrong head."""

    def score(self, hidden, valid, candidates):
        return -super().score(hidden, valid, candidates)


@pytest.mark.parametrize("scorer", ["perfect", "anti"])
def test_switch_margin_calibration(windows, scorer):
    """Calibrated on even episodes, reported on odd: a perfect head keeps margin 0 and reaches the
    oracle; a confidently wrong one gets margin inf and is served as the policy alone."""
    win, _ = windows
    policy = _policy(win, with_stats=False)
    sampler = CandidateSampler.for_policy(policy, SamplerConfig(sigmas=(0.2, 0.5)))
    head = PerfectScorer() if scorer == "perfect" else AntiScorer()
    res = evaluate_windows(win, ["t"] * len(win), policy, head, sampler, OfflineConfig(ns=(1, 4, 16)))
    assert set(res.episode.tolist()) == {0, 1}
    cal = build_report(res, {}, margin_n=16)["switch_margin"]
    held = cal["held_out"]
    odd = res.episode == 1
    assert held["steps"] == int(odd.sum())
    assert held["base"] == pytest.approx(res.l1["base"][odd].mean())
    assert held["rerank@16"] == pytest.approx(res.l1["rerank@16"][odd].mean())
    assert [r["margin"] for r in cal["sweep"]][0] == 0.0 and cal["sweep"][-1]["margin"] == float("inf")
    if scorer == "perfect":
        assert cal["margin"] < float("inf")
        assert held["margin@16"] == pytest.approx(res.l1["oracle@16"][odd].mean())
        assert held["oracle@16"] == pytest.approx(res.l1["oracle@16"][odd].mean())
        assert held["margin_share@16"] == pytest.approx(1.0)
        assert held["switched@16"] > 0.5
    else:
        assert held["rerank@16"] > held["base"]  # the unguarded head does harm
        assert cal["margin"] == float("inf")
        assert held["margin@16"] == pytest.approx(held["base"]) and held["switched@16"] == 0.0
        assert held["margin_share@16"] == 0.0 and held["margin_gain_se@16"] == 0.0


def test_cli_records_the_margin_in_the_bundle(windows, tmp_path):
    from energy_rerank.checkpoint import read_head_record

    win, _ = windows
    policy = _policy(win, with_stats=True)
    policy.save(tmp_path / "policy")
    head = tmp_path / "energy"
    EnergyModel(
        EnergyConfig(context_dim=policy.config.hidden_size, chunk_len=H, hidden=32, heads=4)
    ).save_pretrained(head)
    argv = [
        "eval",
        "offline",
        "--data",
        str(DATA),
        "--policy",
        str(tmp_path / "policy"),
        "--energy",
        str(head),
    ]
    argv += ["--out", str(tmp_path / "eval"), "--n-candidates", "1,64,80", "--stride", "20", "--write-margin"]
    with pytest.raises(SystemExit, match="two episodes"):
        main([*argv, "--demos", "1"])  # one episode: nothing to calibrate on, nothing written
    assert read_head_record(head).switch_margin is None
    assert main([*argv, "--demos", "0-1"]) == 0
    rep = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert rep["switch_margin"]["n"] == 80  # the largest --n-candidates, not 64: the margin must hold up to it
    assert read_head_record(head).switch_margin == rep["switch_margin"]["margin"]


def test_spearman_rows():
    x = np.array([[1.0, 2, 3, 4], [4, 3, 2, 1], [1, 1, 1, 1]])
    y = np.array([[10.0, 20, 30, 40]] * 3)
    rho = _spearman_rows(x, y)
    assert rho[0] == pytest.approx(1) and rho[1] == pytest.approx(-1) and np.isnan(rho[2])


def test_mismatched_policy_chunk_is_rejected(windows):
    win, _ = windows
    policy = ReferenceVLA(ReferenceConfig.preset("tiny", lowdim_dim=22, chunk_len=4))
    sampler = CandidateSampler.for_policy(policy)
    with pytest.raises(ValueError, match=r"recorded windows are \[8, 7\]"):
        evaluate_windows(win, ["t"] * len(win), policy, PerfectScorer(), sampler)


def test_train_policy_on_libero_files_holds_out_the_last_demo_per_task(tmp_path, capsys):
    argv = [
        "train-policy",
        "--data",
        str(DATA),
        "--steps",
        "2",
        "--batch-size",
        "8",
        "--stride",
        "10",
    ]
    assert main([*argv, "--max-text-len", "8", "--out", str(tmp_path / "policy")]) == 0
    summary = json.loads(capsys.readouterr().out)  # the command's one output: its JSON summary
    eps = read_hdf5(DATA)
    assert summary["val_windows"] == len(range(0, eps[1].length, 10))  # demo_1 (the last) held out
    assert summary["train_windows"] == len(range(0, eps[0].length, 10))
    policy = ReferenceVLA.load(tmp_path / "policy")
    assert policy.config.lowdim_dim == 22 and policy.stats is not None


def test_gain_standard_error_is_over_episodes():
    from energy_rerank.evaluation.margin import episode_se

    # Two episodes, steps identical within each: the step-level se would be 0.58, the episode-level 1.0.
    assert episode_se(np.array([1.0, 1.0, 3.0, 3.0]), np.array([0, 0, 1, 1])) == pytest.approx(1.0)
    assert episode_se(np.array([1.0, 2.0]), np.array([5, 5])) == 0.0  # one episode: no spread to measure
