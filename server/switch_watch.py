"""Is the head leaving the policy's chunk far more often than its calibration said it would?

`energy-rerank eval offline --write-margin` records, with the switch margin, how often that margin
switched on held-out episodes at each N (selection.json: calibration.held_out["switched@N"]).
On a robot the rate can drift far above it: the policy visits states the demonstrations never
showed, where the head's energies are least trustworthy (weak LIBERO policy: 36% switched in
closed loop against 15% on the demos; docs/results.md). A head switching that much is the first
thing to look at when a deployment goes worse than the offline numbers said.

The watch keeps the last `window` comparable answers (argmin at the calibrated margin, N >= 2,
not a fallback) with each one's expected rate and exports both rates as gauges. It logs one
warning when the live rate exceeds `factor` x expected and expected + `min_excess`, and is too
unlikely under the expected rate to be chance (binomial tail < `alarm_p`: a window of 10 at a
10% rate reads 30% one time in fifteen). It warns again only after the rate has come back to
halfway between that line and the expected rate, not at every answer while it hovers at the
line. Answers of another model version are not counted, so a hot-swapped head starts a fresh
window with its own calibration.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from dataclasses import dataclass

from prometheus_client import Gauge

from energy_rerank.checkpoint import SwitchExpectation
from energy_rerank.reranker import Reranker, Selection, SelectParams
from energy_rerank.server.metrics import Metrics

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WatchConfig:
    window: int = 500  # comparable answers the live rate is taken over (0 = no watch); ~80 s of one robot at 6 requests/s
    factor: float = 2.0  # warn when live > factor x expected ...
    min_excess: float = 0.1  # ... and live > expected + min_excess (small rates are noisy)
    # ... and that many switches would happen with probability < alarm_p at the expected rate; the
    # rate is tested after every answer, so this is far below the usual 5%
    alarm_p: float = 1e-6

    def __post_init__(self) -> None:
        if self.window < 0:
            raise ValueError(f"switch watch window must be >= 0, got {self.window}")
        if not self.factor >= 1.0 or not self.min_excess >= 0.0 or not 0.0 < self.alarm_p < 1.0:
            raise ValueError(
                "switch watch needs factor >= 1, min_excess >= 0 and 0 < alarm_p < 1, got "
                f"{self.factor}, {self.min_excess}, {self.alarm_p}"
            )


def binomial_tail(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p), summed in log space (n up to a window: no overflow)."""
    if k <= 0 or p >= 1.0:
        return 1.0
    if k > n or p <= 0.0:
        return 0.0
    log_p, log_q = math.log(p), math.log1p(-p)
    terms = [
        math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * log_p + (n - i) * log_q
        for i in range(k, n + 1)
    ]
    top = max(terms)
    return math.exp(top) * sum(math.exp(t - top) for t in terms)


class SwitchWatch:
    """Live switch rate of one model version against its calibration."""

    def __init__(
        self, version: str, expected: SwitchExpectation, config: WatchConfig, live_gauge: Gauge, expected_gauge: Gauge
    ) -> None:
        self.version = version  # answers of other versions (a swap in flight) are ignored
        self.expected = expected
        self.config = config
        self.recent: deque[tuple[bool, float]] = deque(maxlen=config.window)  # (switched, expected rate)
        self.switched = 0  # switches in recent
        self.expected_sum = 0.0  # sum of expected rates in recent
        self.alarmed = False  # warned and not yet back under the line
        self.rate_at: dict[int, float] = {}  # N -> expected.at(N), on the serving path: computed once
        self.live_gauge, self.expected_gauge = live_gauge, expected_gauge

    def observe(self, version: str, params: SelectParams, selection: Selection) -> None:
        n = len(selection.energies)
        if (
            version != self.version
            or selection.fallback
            or n < 2
            or params.rule != "argmin"
            or (params.switch_margin is not None and params.switch_margin != self.expected.margin)
        ):
            return  # not comparable with the calibration
        if len(self.recent) == self.recent.maxlen:
            old_switched, old_expected = self.recent[0]
            self.switched -= old_switched
            self.expected_sum -= old_expected
        expected = self.rate_at.get(n)
        if expected is None:
            expected = self.rate_at[n] = self.expected.at(n)
        switched = selection.index != 0
        self.recent.append((switched, expected))
        self.switched += switched
        self.expected_sum += expected
        count = len(self.recent)
        live, want = self.switched / count, self.expected_sum / count
        self.live_gauge.set(live)
        self.expected_gauge.set(want)
        if count < self.config.window:
            return  # too few answers for a rate worth warning about
        line = max(self.config.factor * want, want + self.config.min_excess)
        if live > line and not self.alarmed and binomial_tail(self.switched, count, want) < self.config.alarm_p:
            self.alarmed = True
            log.warning(
                "energy head %s switched away from the policy's chunk in %.0f%% of the last %d answers; "
                "its calibration expected %.0f%% at the margin %g. The robot is likely in states the "
                "margin was not fitted on: check task success, and recalibrate on episodes from this "
                "deployment (`energy-rerank eval offline --write-margin`) or raise --switch-margin.",
                self.version, 100 * live, count, 100 * want, self.expected.margin,
            )  # fmt: skip
        elif live <= (line + want) / 2:
            self.alarmed = False


def switch_watch_for(
    expected: SwitchExpectation | None, reranker: Reranker, config: WatchConfig, metrics: Metrics
) -> SwitchWatch | None:
    """A watch on this head if it is on and the head has switch rates for the margin it serves with."""
    metrics.switch_rate_live.set(float("nan"))  # this head has measured nothing yet: NaN, not a reassuring 0
    metrics.switch_rate_expected.set(float("nan"))
    if expected is None or not config.window:
        log.info("switch-rate watch off for %s: %s", reranker.model_version,
                 "--switch-watch-window 0" if not config.window else
                 "its bundle records no held-out switch rates at the margin served")  # fmt: skip
        return None
    log.info("switch-rate watch on for %s: expects %s at margin %g", reranker.model_version,
             ", ".join(f"{r:.0%} at N={n}" for n, r in zip(expected.ns, expected.rates, strict=True)), expected.margin)  # fmt: skip
    return SwitchWatch(reranker.model_version, expected, config, metrics.switch_rate_live, metrics.switch_rate_expected)
