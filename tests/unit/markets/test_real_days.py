"""The detector on real Binance 1-minute klines (tests/fixtures/*.csv).

Each row is a Binance kline dump row (header: ``open_time_ms,open,high,low,close,volume,
close_time_ms,quote_volume,trades,taker_buy_base,taker_buy_quote,ignore``); the tick is
``(close_time_ms, close)``. 2024-08-05 was the yen-carry-trade crash (BTC -4.84 % over five
minutes at 01:10 UTC); 2024-08-18 was a calm Sunday.
"""

from __future__ import annotations

import csv
import functools
import itertools
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from mw_core.markets.analysis import analyse_series
from mw_core.markets.windows import SymbolWindows
from mw_core.models import Anomaly


def detect_series(symbol: str, ticks: Any, **kwargs: Any) -> list[Anomaly]:
    """The batch entry point's anomalies (`analyse_series`)."""
    return analyse_series(symbol, ticks, **kwargs).anomalies


pytestmark = pytest.mark.unit

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
WINDOWS = [60, 300, 900]
THRESHOLDS = {60: 0.02, 300: 0.03, 900: 0.05}
CLOSE = timedelta(milliseconds=59_999)  # a kline closes 59.999 s after it opens


def kline_tick(row: list[str]) -> tuple[int, float]:
    """``(close_time_ms, close)`` of one kline dump row.

    Example row: ``1722816000000,58144.50,58190.50,58097.30,58185.90,381.208,1722816059999,...``
    """
    return int(row[6]), float(row[4])


@functools.cache
def ticks(name: str) -> list[tuple[int, float]]:
    with (FIXTURES / f"{name}.csv").open(newline="") as f:
        rows = csv.reader(f)
        header = next(rows)
        assert header[4] == "close" and header[6] == "close_time_ms"
        return [kline_tick(row) for row in rows]


def detect(name: str) -> list[Anomaly]:
    return detect_series(
        name.split("-")[0],
        ticks(name),
        windows_s=WINDOWS,
        threshold_for=lambda symbol, window_s: THRESHOLDS[window_s],
        cooldown_s=60,
    )


def at(ts: int) -> datetime:
    return datetime.fromtimestamp(ts / 1000, tz=UTC)


def utc(day: str, hhmm: str) -> datetime:
    return datetime.fromisoformat(f"{day}T{hhmm}:00+00:00")


def test_fixture_rows_are_whole_days_of_minutes() -> None:
    for name in (
        "BTCUSDT-1m-2024-08-05",
        "BTCUSDT-1m-2024-08-18",
        "ADAUSDT-1m-2024-08-05",
        "SOLUSDT-1m-2024-08-05",
    ):
        ts = [t for t, _ in ticks(name)]
        assert len(ts) == 1440
        assert {b - a for a, b in itertools.pairwise(ts)} == {60_000}


def test_btc_crash_day_alerts_down_around_0110() -> None:
    found = detect("BTCUSDT-1m-2024-08-05")
    crash = [a for a in found if utc("2024-08-05", "01:08") <= at(a.ts) <= utc("2024-08-05", "01:20")]
    assert crash, found
    assert [a.direction for a in crash if at(a.ts) < utc("2024-08-05", "01:15")] == ["down"] * 4
    first = crash[0]
    assert (at(first.ts), first.window_s, first.direction) == (utc("2024-08-05", "01:10") + CLOSE, 60, "down")
    # The 60 s window compares with the previous minute's close (exactly 60 s earlier: inside).
    day = ticks("BTCUSDT-1m-2024-08-05")
    assert (first.ts, first.price, first.ref_ts, first.ref_price) == (*day[70], *day[69])
    assert first.ret == pytest.approx(-0.0330, abs=5e-5)
    # Ticks exactly 60 s apart are outside each other's cooldown: the next minutes alert too.
    assert [(a.window_s, round(a.ret, 4)) for a in crash[1:3]] == [(300, -0.0335), (300, -0.0371)]
    assert any(a.window_s == 900 and a.ret < -0.05 for a in crash)


def test_btc_five_minute_return_at_0110_is_minus_4_84_percent() -> None:
    w = SymbolWindows(WINDOWS)
    for ts, price in ticks("BTCUSDT-1m-2024-08-05"):
        out = w.update(ts, price)
        if at(ts) == utc("2024-08-05", "01:10") + CLOSE:
            break
    assert out[1].window_s == 300
    assert out[1].count == 6
    assert out[1].ret == pytest.approx(-0.0484, abs=5e-5)
    assert out[1].volatility is not None and out[1].volatility > 0.01


def test_btc_calm_day_has_no_anomalies() -> None:
    assert detect("BTCUSDT-1m-2024-08-18") == []


@pytest.mark.parametrize("name", ["ADAUSDT-1m-2024-08-05", "SOLUSDT-1m-2024-08-05"])
def test_alts_crash_day_alerts(name: str) -> None:
    found = detect(name)
    crash = [a for a in found if utc("2024-08-05", "01:08") <= at(a.ts) <= utc("2024-08-05", "01:20")]
    assert crash
    assert crash[0].direction == "down"
    assert at(crash[0].ts) == utc("2024-08-05", "01:08") + CLOSE
    assert {a.symbol for a in found} == {name.split("-")[0]}
    assert all(abs(a.ret) >= a.threshold for a in found)
    assert all(b.ts - a.ts >= 60_000 for a, b in itertools.pairwise(found))
