"""Volatility-aware thresholds: floor, bounded memory, restart from stored closes, real days."""

from __future__ import annotations

import csv
import math
import random
import statistics
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mw_core.markets.analysis import Analyzer
from mw_core.markets.volatility import MINUTE_MS, AdaptiveThresholds
from mw_core.models import Tick

pytestmark = pytest.mark.unit

T0 = 1_722_816_000_000
TH = {60: 0.02, 300: 0.03, 900: 0.05}
FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"


def walk(seed: int, n: int, step_ms: int = 20_000, vol: float = 0.003) -> list[tuple[int, float]]:
    rnd = random.Random(seed)
    ts, p, out = T0, 100.0, []
    for _ in range(n):
        ts += rnd.choice([step_ms, step_ms // 2, step_ms * 3])
        p *= math.exp(rnd.gauss(0, vol))
        out.append((ts, p))
    return out


def closes_of(ticks: list[tuple[int, float]]) -> dict[int, float]:
    out: dict[int, float] = {}
    for ts, p in ticks:
        out[ts // MINUTE_MS] = p
    return out


def test_sigma_matches_a_direct_computation_and_the_floor_holds() -> None:
    ticks = walk(1, 3000)
    base = AdaptiveThresholds([60, 300], lookback_s=3600, z=4.0, min_samples=30)
    for ts, p in ticks:
        base.observe(ts, p)
    closes = closes_of(ticks)
    last = ticks[-1][0] // MINUTE_MS - 1  # the newest completed minute
    for w, lag in ((60, 1), (300, 5)):
        rets = [
            closes[m] / closes[m - lag] - 1
            for m in range(last - 59, last + 1)
            if m in closes and m - lag in closes
        ]
        sd = base.sigma(w)
        assert sd is not None and sd == pytest.approx(statistics.pstdev(rets), rel=1e-6)
        assert base.threshold(w, 0.5) == 0.5  # floor wins over a small sigma
        assert base.threshold(w, 1e-9) == pytest.approx(4.0 * sd)


def test_too_few_samples_means_floor_only() -> None:
    base = AdaptiveThresholds([60], lookback_s=3600, z=1.0, min_samples=30)
    for ts, p in walk(2, 20, step_ms=60_000, vol=0.05):
        base.observe(ts, p)
    assert base.sigma(60) is None and base.threshold(60, 0.02) == 0.02


def test_memory_is_bounded_by_the_lookback() -> None:
    base = AdaptiveThresholds([60, 300, 900], lookback_s=1800, z=4.0)
    for ts, p in walk(3, 20_000):
        base.observe(ts, p)
    assert all(len(s.q) <= 30 for s in base._samples.values())
    assert len(base._closes) <= 16


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32), n=st.integers(50, 1500), frac=st.floats(0.05, 0.95))
def test_restart_from_stored_closes_gives_the_same_thresholds(seed: int, n: int, frac: float) -> None:
    ticks = walk(seed, n)
    cut = int(n * frac)
    whole = AdaptiveThresholds([60, 300, 900], lookback_s=3600, z=4.0, min_samples=5)
    for ts, p in ticks:
        whole.observe(ts, p)
    restarted = AdaptiveThresholds([60, 300, 900], lookback_s=3600, z=4.0, min_samples=5)
    before = ticks[cut][0]
    stored = sorted((m * MINUTE_MS, c) for m, c in closes_of(ticks[:cut]).items())
    restarted.load_closes(stored, before_ts=before)
    for ts, p in ticks[cut:]:
        restarted.observe(ts, p)
    for w in (60, 300, 900):
        a, b = whole.sigma(w), restarted.sigma(w)
        assert (a is None) == (b is None)
        if a is not None and b is not None:
            assert a == pytest.approx(b, rel=1e-6, abs=1e-12)


def load(name: str) -> list[Tick]:
    with (FIXTURES / f"{name}.csv").open() as f:
        rows = list(csv.reader(f))[1:]
    return [Tick(name[:7], int(r[6]), float(r[4])) for r in rows]


@pytest.mark.parametrize("name", ["SOLUSDT-1m-2024-08-05", "ADAUSDT-1m-2024-08-05", "BTCUSDT-1m-2024-08-05"])
def test_adaptive_mode_cuts_detections_and_keeps_the_first_crash(name: str) -> None:
    ticks = load(name)

    def run(adaptive: tuple[int, float, int] | None) -> list[int]:
        an = Analyzer(
            windows_s=[60, 300, 900],
            threshold_for=lambda s, w: TH[w],
            cooldown_s=60,
            max_out_of_order_s=5,
            adaptive=adaptive,
        )
        return [a.ts for a in an.run(ticks).anomalies]

    fixed, adaptive = run(None), run((14_400, 4.0, 30))
    assert len(adaptive) < len(fixed)
    assert set(adaptive) <= set(fixed)  # the fixed % threshold is the floor
    assert adaptive[0] == fixed[0]  # the first crash move is still caught at once
