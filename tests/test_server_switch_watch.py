"""The switch-rate watch: the live share of answers that leave the policy's chunk, against the rate
the head's calibration (selection.json) measured at the same margin and N. Unit tests of the
counting and the warning's hysteresis, then the real server on loopback: a head whose calibration
says it never switches warns once it switches, exports both rates, and a hot swap to a head
without a calibration turns the watch off."""

from __future__ import annotations

import argparse
import logging
import math

import grpc
import numpy as np
import pytest

from energy_rerank.checkpoint import BundleError, SwitchExpectation, write_switch_margin
from energy_rerank.reranker import Selection, SelectParams
from energy_rerank.server.cli import add_parser, config_from_args
from energy_rerank.server.config import ServerConfig
from energy_rerank.server.metrics import Metrics
from energy_rerank.server.models import describe_switch_margin, load_reranker
from energy_rerank.server.switch_watch import SwitchWatch, WatchConfig, binomial_tail
from energy_rerank.server.testing import TINY_CAMERA, TINY_LOWDIM, InProcessServer, write_tiny_bundles
from energy_rerank_client import RerankClient, RetryPolicy

LOGGER = "energy_rerank.server.switch_watch"


def answer(index: int, n: int = 8, fallback: bool = False) -> Selection:
    return Selection(
        chunk=np.zeros((4, 7), np.float32), index=index, energies=np.zeros(n, np.float32), candidates=None,
        fallback=fallback, fallback_reason="", timing={},
    )  # fmt: skip


def record(margin: float, **rates: float) -> dict:
    return {"switch_margin": margin, "calibration": {"n": 8, "held_out": {"base": 0.3, **rates}}}


def test_expectation_is_read_from_the_calibration_and_interpolated_in_log_n() -> None:
    e = SwitchExpectation.from_selection(record(0.5, **{"switched@4": 0.1, "switched@16": 0.3}), 0.5)
    assert e is not None and e.ns == (4, 16) and e.margin == 0.5
    assert e.at(8) == pytest.approx(0.2)  # halfway in log N
    assert e.at(2) == pytest.approx(0.1) and e.at(64) == pytest.approx(0.3)  # nearest outside
    assert SwitchExpectation.from_selection(record(0.5), 0.5) is None  # no switched@N: nothing to compare
    assert SwitchExpectation.from_selection({"switch_margin": 0.5}, 0.5) is None
    for bad in ({"switched@x": 0.1}, {"switched@8": 1.5}, {"switched@0": 0.1}, {"switched@8": "lots"}):
        with pytest.raises(BundleError, match="held_out"):
            SwitchExpectation.from_selection(record(0.5, **bad), 0.5)


def test_expectation_holds_only_at_the_margin_it_was_measured_with(tmp_path) -> None:
    policy, head = write_tiny_bundles(tmp_path)

    def rates(switch_margin: float | None):
        cfg = ServerConfig(policy_path=policy, energy_path=head, backend="torch", switch_margin=switch_margin)
        return load_reranker(cfg).switch_rates

    assert rates(None) is None  # no selection.json
    write_switch_margin(head, 0.25, {"n": 8, "held_out": {"switched@8": 0.2}})
    assert rates(None) == SwitchExpectation(0.25, (8,), (0.2,))
    assert rates(0.25) == SwitchExpectation(0.25, (8,), (0.2,))
    assert rates(0.0) is None  # the server's --switch-margin overrides the calibrated one


@pytest.fixture
def watch() -> tuple[SwitchWatch, Metrics]:
    m = Metrics()
    w = SwitchWatch("v1", SwitchExpectation(0.5, (8,), (0.1,)), WatchConfig(window=10), m.switch_rate_live,
                    m.switch_rate_expected)  # fmt: skip
    return w, m


def test_only_answers_comparable_with_the_calibration_count(watch) -> None:
    w, m = watch
    argmin = SelectParams(num_candidates=8)
    skipped = [
        ("v0", argmin, answer(3)),  # another model version (a swap in flight)
        ("v1", argmin, answer(0, fallback=True)),  # scoring failed: not the head's choice
        ("v1", argmin, answer(0, n=1)),  # nothing to rank
        ("v1", SelectParams(num_candidates=8, rule="softmax"), answer(3)),  # a draw, not argmin
        ("v1", SelectParams(num_candidates=8, switch_margin=0.0), answer(3)),  # the request's own margin
    ]
    for version, params, selection in skipped:
        w.observe(version, params, selection)
    assert len(w.recent) == 0 and math.isnan(m.switch_rate_live._value.get())
    w.observe("v1", SelectParams(num_candidates=8, switch_margin=0.5), answer(3))  # the calibrated margin, spelled out
    w.observe("v1", argmin, answer(0))
    assert len(w.recent) == 2
    assert m.switch_rate_live._value.get() == 0.5 and m.switch_rate_expected._value.get() == pytest.approx(0.1)


def test_warns_once_over_the_line_and_again_only_after_recovering(watch, caplog) -> None:
    w, m = watch
    p = SelectParams(num_candidates=8)
    caplog.set_level(logging.WARNING, LOGGER)

    def feed(indices: list[int]) -> int:
        caplog.clear()
        for i in indices:
            w.observe("v1", p, answer(i))
        return sum("switched away" in r.getMessage() for r in caplog.records)

    assert feed([1] * 9) == 0  # the window is not full yet: no rate worth warning about
    assert feed([0]) == 1  # 9 / 10 against 10%
    assert "90%" in caplog.records[0].getMessage() and "10%" in caplog.records[0].getMessage()
    assert m.switch_rate_live._value.get() == pytest.approx(0.9)
    assert feed([1] * 30) == 0  # still over: said once
    assert feed([0] * 8) == 0  # 2 / 10: under the line (20%), not yet halfway back (15%)
    assert feed([1] * 8) == 0  # so no new warning on crossing again
    assert feed([0] * 9) == 0  # 1 / 10: recovered, re-armed
    assert feed([1] * 7) == 0  # 7 / 10: over the line, but 1 in 10^5 at 10%: not yet beyond chance
    assert feed([1]) == 1  # 8 / 10 (4e-7 at 10%): warns again
    assert feed([0, 1] * 20) == 0


def test_binomial_tail() -> None:
    assert binomial_tail(3, 10, 0.1) == pytest.approx(0.0702, abs=1e-4)
    assert binomial_tail(9, 10, 0.1) == pytest.approx(10 * 0.1**9 * 0.9 + 0.1**10)
    assert binomial_tail(0, 10, 0.3) == 1.0 and binomial_tail(1, 10, 0.0) == 0.0
    assert binomial_tail(400, 500, 0.5) < 1e-40  # log space: no overflow or underflow to nonsense


def test_chance_excursions_of_a_small_window_never_warn(watch, caplog) -> None:
    # 10 answers at a 10% rate read 30% or more one time in fifteen: over the line, but chance
    w, _ = watch
    caplog.set_level(logging.WARNING, LOGGER)
    rng = np.random.default_rng(0)
    for _ in range(500):
        w.observe("v1", SelectParams(num_candidates=8), answer(int(rng.random() < 0.1)))
    assert not [r for r in caplog.records if r.name == LOGGER]


def test_start_up_line_says_what_the_margin_means() -> None:
    assert "policy's own chunk" in describe_switch_margin(math.inf)
    assert describe_switch_margin(0.0) == "switch margin 0: plain argmin"
    assert describe_switch_margin(1.45) == "switch margin 1.45"


def test_flags_reach_the_config() -> None:
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    assert config_from_args(parser.parse_args(["serve"])).switch_watch == WatchConfig()
    args = parser.parse_args(["serve", "--switch-watch-window", "50", "--switch-watch-factor", "3"])
    assert config_from_args(args).switch_watch == WatchConfig(window=50, factor=3.0)
    for flag, value in (("--switch-watch-window", "-1"), ("--switch-watch-factor", "0.5")):
        with pytest.raises(ValueError, match="switch watch"):
            config_from_args(parser.parse_args(["serve", flag, value]))


def test_server_warns_when_the_head_switches_far_more_than_calibrated(tmp_path, caplog) -> None:
    policy, head = write_tiny_bundles(tmp_path / "a")
    _, plain = write_tiny_bundles(tmp_path / "b", seed=1)
    _, broken = write_tiny_bundles(tmp_path / "c", seed=2)
    write_switch_margin(broken, 0.0, {"n": 8, "held_out": {"switched@8": "lots"}})  # a readable margin, bad rates
    # The calibration claims this head almost never leaves the policy's chunk at margin 0; a random
    # head switches at most steps (7 of 8 candidates are not the base).
    write_switch_margin(head, 0.0, {"n": 8, "held_out": {"switched@8": 0.02}})
    token = "watch-token"
    config = ServerConfig(
        address="127.0.0.1:0", metrics_port=None, policy_path=policy, energy_path=head, backend="torch",
        auth_token=token, switch_watch=WatchConfig(window=20),
    )  # fmt: skip
    obs = {
        "images": {TINY_CAMERA: np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)},
        "lowdim": np.random.default_rng(1).normal(size=TINY_LOWDIM).astype(np.float32),
    }
    caplog.set_level(logging.INFO, LOGGER)
    with (
        InProcessServer(load_reranker(config), config) as srv,
        RerankClient(srv.address, token=token, timeout=60, retry=RetryPolicy(attempts=1)) as c,
    ):
        metrics = srv.server.metrics
        assert any("watch on" in r.getMessage() for r in caplog.records)
        assert c.info().calibrated_switch_rates == {8: pytest.approx(0.02)}  # GetModelInfo tells clients
        switched = [c.select(**obs, num_candidates=8, seed=s).index != 0 for s in range(25)]
        live = metrics.switch_rate_live._value.get()
        assert live == pytest.approx(np.mean(switched[-20:])) and live > 0.5
        assert metrics.switch_rate_expected._value.get() == pytest.approx(0.02)
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1 and "switched away" in warnings[0] and "2%" in warnings[0]

        watch, version = srv.server.servicer.switch_watch, c.info().model_version
        with pytest.raises(grpc.RpcError) as e:  # refused whole: the old head, its watch and rates stay
            c.reload_energy_head(str(broken))
        assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "held_out" in e.value.details()
        assert srv.server.servicer.switch_watch is watch and c.select(**obs, num_candidates=8).model_version == version
        assert metrics.reloads.labels(result="error")._value.get() == 1

        c.reload_energy_head(str(plain))  # a head without a calibration: nothing to compare with
        assert srv.server.servicer.switch_watch is None and c.info().calibrated_switch_rates == {}
        c.select(**obs, num_candidates=8, seed=0)
        assert math.isnan(metrics.switch_rate_live._value.get())
        assert math.isnan(metrics.switch_rate_expected._value.get())
