"""AnomalyDetector rules (threshold, winner, direction, cooldown) and the batch entry `analyse_series`."""

from __future__ import annotations

import functools
import itertools
import math
import random
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mw_core.config import load_settings
from mw_core.markets.analysis import analyse_series
from mw_core.markets.detector import AnomalyDetector
from mw_core.markets.windows import SymbolWindows
from mw_core.models import Anomaly


def detect_series(symbol: str, ticks: Any, **kwargs: Any) -> list[Anomaly]:
    """The batch entry point's anomalies (`analyse_series`)."""
    return analyse_series(symbol, ticks, **kwargs).anomalies


pytestmark = pytest.mark.unit

T0 = 1_722_816_059_999
THRESHOLDS = {60: 0.02, 300: 0.03, 900: 0.05}


def flat(symbol: str, window_s: int) -> float:
    return THRESHOLDS[window_s]


def constant(value: float) -> Callable[[str, int], float]:
    return lambda symbol, window_s: value


WINDOWS = (60, 300, 900)


def detector(cooldown_s: int = 60) -> AnomalyDetector:
    return AnomalyDetector(windows_s=WINDOWS, threshold_for=flat, cooldown_s=cooldown_s)


def stats(r60: float, r300: float = 0.0, r900: float = 0.0) -> list[float]:
    """Window returns in the order of WINDOWS (what `SymbolWindows.advance` returns)."""
    return [r60, r300, r900]


def test_below_threshold_is_quiet_and_at_threshold_alerts() -> None:
    det = detector()
    assert det.check("BTCUSDT", T0, 100.0, stats(0.0199, 0.0299, -0.0499)) is None
    assert det.check("BTCUSDT", T0, 100.0, stats(-0.0199, -0.0299, 0.0499)) is None
    assert det.last_alert("BTCUSDT") is None
    a = det.check("BTCUSDT", T0, 100.0, stats(0.0, 0.03, 0.0))  # |ret| >= threshold
    assert a is not None
    assert (a.window_s, a.threshold, a.direction) == (300, 0.03, "up")


def test_anomaly_fields_without_windows() -> None:
    a = detector().check("BTCUSDT", T0, 97.0, stats(-0.03))
    assert a is not None
    assert a.ref_price == pytest.approx(100.0)
    # symbol, ts, window_s, ret, direction, price, threshold; no volatility, no reference time
    assert a == Anomaly(
        "BTCUSDT", T0, 60, -0.03, "down", 97.0, 0.02, volatility=None, ref_price=a.ref_price, ref_ts=None
    )


def test_exact_reference_from_windows() -> None:
    w = SymbolWindows([60, 300, 900])
    det = detector()
    assert det.check("BTCUSDT", T0, 100.0, w.advance(T0, 100.0), windows=w) is None
    assert det.check("BTCUSDT", T0 + 60_000, 101.0, w.advance(T0 + 60_000, 101.0), windows=w) is None
    a = det.check("BTCUSDT", T0 + 120_000, 110.0, w.advance(T0 + 120_000, 110.0), windows=w)
    # 60 s: 110/101 - 1 = 8.9 % (4.46x); 300 s: 10 % (3.33x); 900 s: 10 % (2x) -> the 60 s window.
    assert a is not None
    assert (a.window_s, a.ref_ts, a.ref_price, a.price) == (60, T0 + 60_000, 101.0, 110.0)
    assert a.ret == 110.0 / 101.0 - 1.0
    assert a.volatility is None  # one return in the 60 s window
    w.advance(T0 + 125_000, 111.0)
    a = det.check("BTCUSDT", T0 + 180_000, 122.0, w.advance(T0 + 180_000, 122.0), windows=w)
    assert a is not None and a.window_s == 300  # 122/100: 22 % (7.3x) beats 60 s' 10.9 % (5.5x)
    lrs = [math.log(b / a) for a, b in itertools.pairwise([100.0, 101.0, 110.0, 111.0, 122.0])]
    mean = sum(lrs) / 4
    assert a.volatility == pytest.approx(math.sqrt(sum((x - mean) ** 2 for x in lrs) / 3), rel=1e-12)
    assert a.volatility == pytest.approx(w.stats()[1].volatility, rel=1e-12)


def test_largest_ratio_wins_and_ties_go_to_the_shortest_window() -> None:
    det = detector(cooldown_s=0)
    a = det.check("X", T0, 1.0, stats(0.021, -0.06, 0.05))  # ratios 1.05, 2.0, 1.0
    assert a is not None
    assert (a.window_s, a.direction, a.volatility) == (300, "down", None)
    tie = AnomalyDetector(
        windows_s=[900, 300, 60], threshold_for=lambda s, w: {60: 0.25, 300: 0.5, 900: 1.0}[w], cooldown_s=0
    )
    # Exactly representable: 0.5/0.25 == 1.0/0.5 == 2.0, so the tie is real.
    a = tie.check("X", T0, 1.0, [1.0, -1.0, 0.5])
    assert a is not None
    assert (a.window_s, a.ret) == (60, 0.5)
    a = tie.check("X", T0 + 1, 1.0, [1.0, -1.0, 0.0])
    assert a is not None
    assert (a.window_s, a.direction, a.ref_price) == (300, "down", None)  # -100 %: no reference price


def test_per_symbol_override_through_settings() -> None:
    cfg = load_settings(
        thresholds={60: 0.02, 300: 0.03, 900: 0.05},
        symbol_thresholds={"SOLUSDT": {60: 0.04}},
        windows_s=[60, 300, 900],
        cooldown_s=60,
    )
    det = AnomalyDetector(windows_s=WINDOWS, threshold_for=cfg.threshold_for, cooldown_s=cfg.cooldown_s)
    assert det.check("SOLUSDT", T0, 1.0, stats(0.03)) is None
    a = det.check("BTCUSDT", T0, 1.0, stats(0.03))
    assert a is not None
    assert a.threshold == 0.02
    a = det.check("SOLUSDT", T0 + 1, 1.0, stats(-0.045))
    assert a is not None
    assert (a.threshold, a.direction) == (0.04, "down")
    assert det.threshold("SOLUSDT", 300) == 0.03  # not overridden: global value


def test_threshold_for_is_cached_and_validated() -> None:
    calls: list[tuple[str, int]] = []

    def counting(symbol: str, window_s: int) -> float:
        calls.append((symbol, window_s))
        return THRESHOLDS[window_s]

    det = AnomalyDetector(windows_s=WINDOWS, threshold_for=counting, cooldown_s=0)
    for k in range(50):
        det.check("BTCUSDT", T0 + k, 1.0, stats(0.001 * k))
    assert sorted(calls) == [("BTCUSDT", 60), ("BTCUSDT", 300), ("BTCUSDT", 900)]
    for bad in (0.0, -0.01, math.inf, math.nan):
        broken = AnomalyDetector(windows_s=WINDOWS, threshold_for=constant(bad), cooldown_s=0)
        with pytest.raises(ValueError, match="threshold"):
            broken.check("BTCUSDT", T0, 1.0, stats(0.5))
    with pytest.raises(ValueError):
        AnomalyDetector(windows_s=WINDOWS, threshold_for=flat, cooldown_s=-1)


def test_cooldown_is_event_time_with_inclusive_end() -> None:
    """Suppressed while ts - t0 < cooldown; a tick exactly cooldown_s later alerts again."""
    det = detector(cooldown_s=60)
    assert det.check("BTCUSDT", T0, 1.0, stats(0.05)) is not None
    assert det.last_alert("BTCUSDT") == T0
    assert det.check("BTCUSDT", T0 + 1, 1.0, stats(0.05)) is None
    assert det.check("BTCUSDT", T0 + 59_999, 1.0, stats(0.05)) is None
    assert det.last_alert("BTCUSDT") == T0  # suppressed alerts do not extend the cooldown
    assert det.check("ETHUSDT", T0 + 1, 1.0, stats(0.05)) is not None  # per symbol
    a = det.check("BTCUSDT", T0 + 60_000, 1.0, stats(-0.05))
    assert a is not None
    assert a.direction == "down"
    assert det.last_alert("BTCUSDT") == T0 + 60_000
    assert det.check("BTCUSDT", T0 + 60_000 + 10, 1.0, stats(0.0)) is None


def test_no_cooldown() -> None:
    det = detector(cooldown_s=0)
    assert all(det.check("BTCUSDT", T0 + k, 1.0, stats(0.05)) is not None for k in range(5))


def test_seed_cooldown_restores_and_keeps_the_newest() -> None:
    det = detector(cooldown_s=60)
    assert det.last_alert("BTCUSDT") is None
    det.seed_cooldown("BTCUSDT", T0)
    det.seed_cooldown("BTCUSDT", T0 - 30_000)  # older: ignored
    assert det.last_alert("BTCUSDT") == T0
    assert det.check("BTCUSDT", T0 + 30_000, 1.0, stats(0.05)) is None
    assert det.check("BTCUSDT", T0 + 60_000, 1.0, stats(0.05)) is not None


def per_tick_loop(
    symbol: str,
    ticks: list[tuple[int, float]],
    warmup: list[tuple[int, float]],
    cooldown_s: int,
    last_alert_ts: int | None,
) -> list[Anomaly]:
    """What the streaming processor does, tick by tick."""
    w = SymbolWindows([60, 300, 900])
    w.load(warmup)
    det = AnomalyDetector(windows_s=WINDOWS, threshold_for=flat, cooldown_s=cooldown_s)
    if last_alert_ts is not None:
        det.seed_cooldown(symbol, last_alert_ts)
    out = []
    for ts, price in ticks:
        newest = w.newest_ts
        if newest is not None and ts <= newest:
            continue
        w.update(ts, price)  # statistics asked for at every tick: must not change the anomalies
        a = det.check(symbol, ts, price, [s.ret for s in w.stats()], windows=w)
        if a is not None:
            out.append(a)
    return out


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 2**32),
    n=st.integers(1, 600),
    n_warm=st.integers(0, 300),
    cooldown_s=st.sampled_from([0, 1, 60, 300]),
    seeded=st.booleans(),
)
def test_detect_series_equals_per_tick_loop(
    seed: int, n: int, n_warm: int, cooldown_s: int, seeded: bool
) -> None:
    rnd = random.Random(seed)
    ts, price = T0, 50.0
    ticks = []
    for _ in range(n_warm + n):
        ts += rnd.choice([1, 500, 1000, 10_000, 60_000])
        price *= math.exp(rnd.choice([rnd.gauss(0, 0.002), rnd.gauss(0, 0.02)]))
        ticks.append((ts, price))
    warmup, live = ticks[:n_warm], ticks[n_warm:]
    live = live + live[: rnd.randint(0, 3)]  # replayed (old) ticks are skipped by both
    last = ticks[n_warm][0] - rnd.randint(0, 400_000) if seeded else None
    got = detect_series(
        "SOLUSDT",
        live,
        windows_s=[60, 300, 900],
        threshold_for=flat,
        cooldown_s=cooldown_s,
        warmup=warmup,
        last_alert_ts=last,
    )
    assert got == per_tick_loop("SOLUSDT", live, warmup, cooldown_s, last)
    assert all(a.ref_ts is not None and a.ref_ts <= a.ts for a in got)
    assert all(a.ts - b.ts >= cooldown_s * 1000 for b, a in itertools.pairwise(got))


def test_detect_series_warmup_is_not_checked_but_fills_windows() -> None:
    run = functools.partial(
        detect_series, "BTCUSDT", windows_s=[60, 300, 900], threshold_for=flat, cooldown_s=120
    )
    warmup = [(T0, 100.0), (T0 + 60_000, 90.0)]  # a -10 % minute, before the series
    ticks = [(T0 + 120_000, 90.0), (T0 + 180_000, 90.5)]
    # The first live tick is flat over 60 s but -10 % over 300 s against the warm-up's first tick;
    # the second one is still -9.5 % but within the 120 s cooldown.
    got = run(ticks, warmup=warmup)
    assert [(a.ts, a.window_s, a.ref_ts, a.ref_price) for a in got] == [(T0 + 120_000, 300, T0, 100.0)]
    assert [a.ts for a in run(warmup + ticks)] == [T0 + 60_000, T0 + 180_000]
    assert run(ticks, warmup=warmup, last_alert_ts=T0 + 100_000) == []
    assert run([]) == []
