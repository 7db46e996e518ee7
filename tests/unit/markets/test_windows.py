"""SymbolWindows against a brute-force reference, plus the metrics helpers."""

from __future__ import annotations

import math
import random
from bisect import bisect_left
from collections.abc import Sequence

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mw_core.markets import windows as windows_mod
from mw_core.markets.window_math import exact_moments, metric_rows, sample_std
from mw_core.markets.windows import SymbolWindows
from mw_core.models import WindowStats

pytestmark = pytest.mark.unit

T0 = 1_722_816_059_999
REL, ABS = 1e-6, 1e-9


def brute(ticks: Sequence[tuple[int, float]], window_s: int) -> tuple[float, float | None, int, int, float]:
    """Recompute (ret, volatility, count, ref_ts, ref_price) from the full tick list."""
    now, price = ticks[-1]
    first = bisect_left(ticks, (now - window_s * 1000,))  # first tick with ts >= now - W
    inside = ticks[first:]
    assert all(t[0] >= now - window_s * 1000 for t in inside)
    assert first == 0 or ticks[first - 1][0] < now - window_s * 1000
    ref_ts, ref_price = inside[0]
    lrs = [math.log(inside[j][1] / inside[j - 1][1]) for j in range(1, len(inside))]
    vol = None
    if len(lrs) >= 2:
        mean = math.fsum(lrs) / len(lrs)
        vol = math.sqrt(math.fsum((x - mean) ** 2 for x in lrs) / (len(lrs) - 1))
    return price / ref_price - 1.0, vol, len(inside), ref_ts, ref_price


def assert_matches(w: SymbolWindows, ticks: Sequence[tuple[int, float]], out: Sequence[WindowStats]) -> None:
    assert [s.window_s for s in out] == list(w.windows_s)
    for i, s in enumerate(out):
        ret, vol, count, ref_ts, ref_price = brute(ticks, s.window_s)
        assert s.ret == ret  # same reference tick, same formula: bit-identical
        assert s.count == count
        assert w.reference(i) == (ref_ts, ref_price)
        if vol is None:
            assert s.volatility is None
        else:
            assert s.volatility is not None
            assert math.isclose(s.volatility, vol, rel_tol=REL, abs_tol=ABS), (s, vol)


def walk(p0: float, steps: Sequence[tuple[int, float]], t0: int = T0) -> list[tuple[int, float]]:
    """Ticks from (gap_ms, log_step) pairs."""
    ticks = []
    ts, logp = t0, math.log(p0)
    for gap, step in steps:
        ts += gap
        logp += step
        ticks.append((ts, math.exp(logp)))
    return ticks


gaps = st.one_of(
    st.integers(1, 2_000),  # bursts of trades
    st.integers(1, 120_000),  # seconds to minutes
    st.integers(1, 1_000_000),  # up to 1000 s: whole windows empty out
)
log_steps = st.one_of(
    st.floats(-0.05, 0.05, allow_nan=False),
    st.sampled_from([0.0, 0.3, -0.3, 1e-12]),  # flat prices, big jumps, tiny moves
)
window_sets = st.lists(st.sampled_from([1, 2, 5, 60, 300, 900]), min_size=1, max_size=4, unique=True)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    windows_s=window_sets,
    p0=st.floats(1e-4, 1e5),
    steps=st.lists(st.tuples(gaps, log_steps), min_size=1, max_size=150),
)
def test_matches_brute_force(windows_s: list[int], p0: float, steps: list[tuple[int, float]]) -> None:
    w = SymbolWindows(windows_s)
    ticks = walk(p0, steps)
    for k, (ts, price) in enumerate(ticks):
        out = w.update(ts, price)
        assert_matches(w, ticks[: k + 1], out)
        assert w.newest_ts == ts
        assert len(w) == out[w.windows_s.index(max(windows_s))].count


@settings(max_examples=25, deadline=None)
@given(windows_s=window_sets, seed=st.integers(0, 2**32), n=st.integers(300, 1200))
def test_long_random_walks_match_brute_force(windows_s: list[int], seed: int, n: int) -> None:
    """Long walks mixing trade bursts, gaps, flat stretches and jumps."""
    rnd = random.Random(seed)
    steps = []
    for _ in range(n):
        gap = rnd.choice([1, 37, 1000, 1000, 5000, 61_000, 400_000])
        step = rnd.choice([0.0, 0.0, rnd.gauss(0, 1e-4), rnd.gauss(0, 0.01), rnd.uniform(-0.5, 0.5)])
        steps.append((gap, step))
    ticks = walk(rnd.uniform(1e-3, 1e5), steps)
    w = SymbolWindows(windows_s)
    for k, (ts, price) in enumerate(ticks):
        assert_matches(w, ticks[: k + 1], w.update(ts, price))


@settings(max_examples=40, deadline=None)
@given(
    step=st.floats(-0.5, 0.5, allow_nan=False).filter(lambda x: x != 0.0),
    outlier=st.floats(-3.0, 3.0, allow_nan=False),
    noise=st.floats(1e-12, 1e-3),
)
def test_precision_after_outlier_and_with_constant_returns(step: float, outlier: float, noise: float) -> None:
    """Constant returns (zero variance, big mean) and a big return leaving a calm window."""
    rnd = random.Random(7)
    steps = [(1000, step)] * 80 + [(1000, outlier)] + [(1000, rnd.uniform(-noise, noise)) for _ in range(150)]
    ticks = walk(100.0, steps)
    w = SymbolWindows([10, 60, 120])
    for k, (ts, price) in enumerate(ticks):
        assert_matches(w, ticks[: k + 1], w.update(ts, price))


def test_long_run_compaction_and_resync() -> None:
    """Enough ticks to compact the buffer many times and pass a full exact resync."""
    rnd = random.Random(42)
    steps = [
        (rnd.choice([1, 250, 1000, 3000]), rnd.gauss(0, 0.002))
        for _ in range(windows_mod.RESYNC_EVICTIONS + 3000)
    ]
    ticks = walk(58_000.0, steps)
    w = SymbolWindows([5, 60, 300])
    for k, (ts, price) in enumerate(ticks):
        out = w.update(ts, price)
        if k % 997 == 0 or k == len(ticks) - 1:
            assert_matches(w, ticks[max(0, k - 2000) : k + 1], out)
    # Only the longest window's ticks (plus a bounded dead prefix) stay in memory.
    assert len(w) == out[2].count
    assert len(w._tsb) <= 1.5 * len(w) + windows_mod.COMPACT_MIN + 2


def test_one_minute_klines_boundary() -> None:
    """Ticks exactly W apart: the tick at now - W is inside the window (ts >= now - W)."""
    w = SymbolWindows([60, 300])
    w.update(T0, 100.0)
    out = w.update(T0 + 60_000, 103.0)
    assert (out[0].window_s, out[0].volatility, out[0].count) == (60, None, 2)
    assert out[0].ret == pytest.approx(0.03)
    assert w.reference(0) == (T0, 100.0)
    out = w.update(T0 + 120_001, 103.0)  # 60.001 s after the previous tick: it is outside
    assert (out[0].ret, out[0].count, out[0].volatility) == (0.0, 1, None)
    assert out[1].count == 3


def test_windows_in_given_order_and_validation() -> None:
    w = SymbolWindows([900, 60, 300])
    out = w.update(T0, 10.0)
    assert [s.window_s for s in out] == [900, 60, 300]
    assert all(s == WindowStats(s.window_s, 0.0, None, 1) for s in out)
    for bad in ([], [0], [60, 60], [-5]):
        with pytest.raises(ValueError):
            SymbolWindows(bad)


def test_rejects_old_ticks_and_bad_prices_without_changing_state() -> None:
    empty = SymbolWindows([60])
    assert (empty.newest_ts, len(empty)) == (None, 0)
    with pytest.raises(LookupError):
        empty.reference(0)
    w = SymbolWindows([60])
    w.update(T0, 10.0)
    for ts, price in [
        (T0, 11.0),
        (T0 - 1, 11.0),
        (T0 + 1, 0.0),
        (T0 + 1, -1.0),
        (T0 + 1, math.nan),
        (T0 + 1, math.inf),
    ]:
        with pytest.raises(ValueError):
            w.update(ts, price)
    assert (w.newest_ts, len(w)) == (T0, 1)
    out = w.update(T0 + 1000, 11.0)
    assert out[0].ret == pytest.approx(0.1)
    assert out[0].count == 2


def test_load_equals_sequential_updates() -> None:
    rnd = random.Random(3)
    ticks = walk(2.5, [(rnd.choice([500, 1000, 7000]), rnd.gauss(0, 0.01)) for _ in range(3000)])
    history, live = ticks[:2000], ticks[2000:]
    loaded = SymbolWindows([60, 300, 900])
    loaded.load(history)
    loaded.load(history[-50:])  # already known: ignored
    stepped = SymbolWindows([60, 300, 900])
    for ts, price in history:
        stepped.update(ts, price)
    assert loaded.newest_ts == stepped.newest_ts == history[-1][0]
    assert len(loaded) == len(stepped)
    for k, (ts, price) in enumerate(live):
        a, b = loaded.update(ts, price), stepped.update(ts, price)
        assert [(s.window_s, s.ret, s.count) for s in a] == [(s.window_s, s.ret, s.count) for s in b]
        for sa, sb in zip(a, b, strict=True):
            assert sa.volatility == pytest.approx(sb.volatility, rel=1e-9)
        if k % 250 == 0:
            assert_matches(loaded, ticks[: 2000 + k + 1], a)


def test_load_skips_old_and_out_of_order_and_rejects_bad_prices() -> None:
    w = SymbolWindows([60])
    w.load([(T0, 1.0), (T0 - 5, 2.0), (T0 + 1000, 2.0), (T0 + 1000, 3.0)])
    assert (w.newest_ts, len(w)) == (T0 + 1000, 2)
    with pytest.raises(ValueError):
        w.load([(T0 + 2000, 2.0), (T0 + 3000, -1.0)])
    assert w.newest_ts == T0 + 1000  # nothing loaded
    w.load([])
    out = w.update(T0 + 2000, 4.0)
    assert (out[0].ret, out[0].count) == (3.0, 3)


@settings(max_examples=60, deadline=None)
@given(
    windows_s=window_sets,
    seed=st.integers(0, 2**32),
    n=st.integers(50, 1500),
    every=st.sampled_from([1, 3, 37, 200, 5000]),
)
def test_sparse_requests_match_brute_force(windows_s: list[int], seed: int, n: int, every: int) -> None:
    """The hot path only advances; statistics asked for now and then are still exact.

    `advance` returns the returns bit-identical to the brute force; `stats` after any number of
    un-asked ticks (lazy catch-up over additions and removals, compactions in between) and
    `volatility` (exact two-pass) match it.
    """
    rnd = random.Random(seed)
    steps = []
    for _ in range(n):
        gap = rnd.choice([1, 37, 1000, 1000, 5000, 61_000, 400_000])
        step = rnd.choice([0.0, rnd.gauss(0, 1e-4), rnd.gauss(0, 0.01), rnd.uniform(-0.5, 0.5)])
        steps.append((gap, step))
    ticks = walk(rnd.uniform(1e-3, 1e5), steps)
    w = SymbolWindows(windows_s)
    for k, (ts, price) in enumerate(ticks):
        rets = w.advance(ts, price)
        assert rets == [brute(ticks[: k + 1], ws)[0] for ws in windows_s]
        if rnd.random() < 1 / every or k == len(ticks) - 1:
            assert_matches(w, ticks[: k + 1], w.stats())
            for i, ws in enumerate(windows_s):
                vol = brute(ticks[: k + 1], ws)[1]
                got = w.volatility(i)
                assert (got is None) == (vol is None)
                if vol is not None and got is not None:
                    assert math.isclose(got, vol, rel_tol=1e-12, abs_tol=1e-15)


def test_stats_before_the_first_tick() -> None:
    w = SymbolWindows([60])
    with pytest.raises(LookupError):
        w.stats()
    assert w.volatility(0) is None
    assert w.advance(T0, 5.0) == [0.0]
    assert w.stats() == (WindowStats(60, 0.0, None, 1),)


def test_metric_rows() -> None:
    stats = [WindowStats(60, 0.01, None, 2), WindowStats(300, -0.02, 0.003, 6)]
    assert metric_rows("BTCUSDT", T0, stats) == [
        ("BTCUSDT", T0, 60, 0.01, None, 2),
        ("BTCUSDT", T0, 300, -0.02, 0.003, 6),
    ]
    assert metric_rows("BTCUSDT", T0, []) == []


def test_exact_moments_and_sample_std() -> None:
    assert exact_moments([]) == (0, 0.0, 0.0)
    n, mean, m2 = exact_moments(iter([1.0, 2.0, 3.0, 4.0]))
    assert (n, mean, m2) == (4, 2.5, 5.0)
    assert sample_std(m2, n) == pytest.approx(1.2909944487358056)
    assert exact_moments([1e9 + 0.1] * 5)[2] == 0.0  # big mean, no spread: no cancellation noise
    assert sample_std(5.0, 1) is None
    assert sample_std(-1e-30, 3) == 0.0
