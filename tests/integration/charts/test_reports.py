"""Chart queries and use cases against the real test PostgreSQL, with the crash day stored."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

import asyncpg
import numpy as np
import pytest

from mw_core.adapters.postgres import charts as repo
from mw_core.adapters.postgres.episodes import insert_events
from mw_core.adapters.postgres.prices import insert_ticks
from mw_core.batch.backtest import backtest_files
from mw_core.charts.market import DAY_MS
from mw_core.charts.model import Chart
from mw_core.charts.reports import alert_charts, daily_report, market_overview
from mw_core.config import Settings, load_settings
from mw_core.markets.episodes import EpisodeEvent
from mw_core.models import ms_to_dt
from mw_core.news.parse import Headline
from mw_core.news.store import insert_headlines
from mw_core.replay.klines import read_sources
from tests.unit.charts.support import CRASH_DAY_MS, CRASH_FILES, CRASH_SYMBOLS, assert_picture, day_points

pytestmark = pytest.mark.integration

HOSTILE = "<script>alert(1)</script> $BTC$ crash"


@dataclass
class Stored:
    settings: Settings
    events: list[EpisodeEvent]
    series: dict[str, list[tuple[int, float]]]


@pytest.fixture
async def stored(pool: asyncpg.Pool, db_url: str, tmp_path: Path) -> Stored:
    """The crash day's ticks, its real episode events and two headlines in the database."""
    settings = load_settings(database_url=db_url, symbols=list(CRASH_SYMBOLS), state_dir=tmp_path / "state")
    ticks = [k.to_tick() for f in read_sources(CRASH_FILES) for k in f.klines]
    events = backtest_files(CRASH_FILES, settings).events
    first = events[0]
    async with pool.acquire() as conn, conn.transaction():
        await insert_ticks(conn, ticks)
        await insert_events(conn, events)
    await insert_headlines(
        pool,
        [
            Headline(
                id="h1",
                source="t",
                title=HOSTILE,
                link=None,
                summary="",
                sentiment=-0.8,
                published=ms_to_dt(first.ts - 300_000),
                symbols=(first.symbol,),
            ),
            Headline(
                id="h2",
                source="t",
                title="Other coin",
                link=None,
                summary="",
                sentiment=0.5,
                published=ms_to_dt(first.ts),
                symbols=("ETHUSDT",),
            ),
        ],
    )
    series = {s: day_points(f) for s, f in zip(CRASH_SYMBOLS, CRASH_FILES, strict=True)}
    return Stored(settings=settings, events=events, series=series)


async def test_price_windows_read_many_spans_in_one_query(pool: asyncpg.Pool, stored: Stored) -> None:
    btc = stored.series["BTCUSDT"]
    t0, t1 = CRASH_DAY_MS + 3_600_000, CRASH_DAY_MS + 5_400_000
    spans = [("BTCUSDT", t0, t1), ("SOLUSDT", t0, t1), ("BTCUSDT", t0, t1 + 1), ("XRPUSDT", t0, t1)]
    raw = await repo.price_windows(pool, spans)
    assert raw[0] == [p for p in btc if t0 <= p[0] < t1] and len(raw[0]) == 30
    assert len(raw[1]) == 30 and raw[3] == []
    binned = await repo.price_windows(pool, spans[:1], bucket_s=300)
    assert len(binned[0]) == 6
    assert all(b == raw[0][i] for b, i in zip(binned[0], range(4, 30, 5), strict=True))  # last of each bucket
    day = await repo.price_series(pool, list(CRASH_SYMBOLS), CRASH_DAY_MS, CRASH_DAY_MS + DAY_MS)
    assert repo.auto_bucket_s(DAY_MS) == 60 and len(day["ADAUSDT"]) == 1440
    assert repo.auto_bucket_s(3_600_000) == 0 and repo.auto_bucket_s(7 * DAY_MS) == 420


async def test_headlines_between_match_any_symbol(pool: asyncpg.Pool, stored: Stored) -> None:
    first = stored.events[0]
    marks = await repo.headlines_between(pool, [first.symbol], first.ts - 3_600_000, first.ts + 1)
    assert [(m.title, m.sentiment, m.symbols) for m in marks] == [(HOSTILE, -0.8, (first.symbol,))]
    assert await repo.headlines_between(pool, [], 0, 1) == []


async def test_overview_rows_and_metrics_as_of_a_time(pool: asyncpg.Pool, stored: Stored) -> None:
    now = CRASH_DAY_MS + DAY_MS - 1  # the last tick of the day closes at 23:59:59.999
    rows = {r.symbol: r for r in await repo.overview_rows(pool, [*CRASH_SYMBOLS, "XRPUSDT"], now)}
    btc = stored.series["BTCUSDT"]
    r = rows["BTCUSDT"]
    assert r.last_price == btc[-1][1] and r.last_ts == btc[-1][0]
    assert r.change_24h == pytest.approx(btc[-1][1] / btc[0][1] - 1)
    assert r.change_1h == pytest.approx(btc[-1][1] / btc[-61][1] - 1)  # the tick exactly 1 h before counts
    expected_vol = float(np.std(np.diff(np.log([p for _, p in btc])), ddof=1))
    assert r.volatility_24h is not None and math.isclose(r.volatility_24h, expected_vol, rel_tol=1e-9)
    alerts = [e for e in stored.events if e.symbol == "BTCUSDT" and e.kind != "close"]
    assert r.alerts_today == len(alerts) and r.open_episode is None
    assert rows["XRPUSDT"].last_price is None and rows["XRPUSDT"].change_24h is None
    # During the first episode, it is open, and the market metrics see it.
    first = stored.events[0]
    during = await repo.overview_rows(pool, [first.symbol], first.ts + 60_000)
    assert during[0].open_episode == first.episode_id
    metrics = await repo.market_metrics(pool, list(CRASH_SYMBOLS), first.ts + 60_000)
    assert metrics.open_episodes >= 1 and metrics.alerts_per_hour >= 1
    assert metrics.tick_rate == pytest.approx(15 / 300)  # 3 symbols x 5 one-minute klines


async def test_alert_charts_one_per_event_up_to_the_cap(pool: asyncpg.Pool, stored: Stored) -> None:
    alerts = [e for e in stored.events if e.kind != "close"]
    out = await alert_charts(pool, alerts, cap=3, now_ms=CRASH_DAY_MS + DAY_MS)
    assert [e for e, _ in out] == alerts
    charts = [c for _, c in out if isinstance(c, Chart)]
    assert len(charts) == 3 and all(c.reason is None for c in charts)
    for c in charts:
        assert_picture(c, min_colours=100)
    assert all(isinstance(c, str) and "cap" in c for _, c in out[3:])
    assert await alert_charts(pool, [], cap=5) == []


async def test_alert_chart_of_a_symbol_without_prices(pool: asyncpg.Pool, stored: Stored) -> None:
    ghost = replace(next(e for e in stored.events if e.kind == "open"), symbol="XRPUSDT")
    [(_, chart)] = await alert_charts(pool, [ghost], cap=1)
    assert isinstance(chart, Chart) and chart.reason == "no data in window"


async def test_market_overview(pool: asyncpg.Pool, stored: Stored) -> None:
    now = CRASH_DAY_MS + DAY_MS - 1
    overview = await market_overview(pool, stored.settings, now)
    assert [r.symbol for r in overview.rows] == sorted(CRASH_SYMBOLS)
    assert overview.chart.reason is None
    assert_picture(overview.chart, min_colours=100)
    assert overview.top_movers[0].symbol == "ADAUSDT"  # the day's largest move
    assert len(overview.alerts) == len([e for e in stored.events if e.kind != "close"])
    assert overview.table()[0]["symbol"] == "ADAUSDT" and str(overview.table()[0]["24 h"]).startswith("-")
    assert overview.metrics.open_episodes == 0


async def test_daily_report_writes_one_chart_per_symbol(
    pool: asyncpg.Pool, stored: Stored, tmp_path: Path
) -> None:
    report = await daily_report(pool, stored.settings, CRASH_DAY_MS + 12 * 3_600_000, tmp_path / "state")
    assert (
        report.day == "2024-08-05"
        and report.path == tmp_path / "state" / "reports" / "market-report-2024-08-05.html"
    )
    assert [s for s, _ in report.charts] == list(CRASH_SYMBOLS)
    for _, chart in report.charts:
        assert chart.reason is None
        assert_picture(chart, min_colours=100)
    assert report.episodes == {"BTCUSDT": 3, "SOLUSDT": 3, "ADAUSDT": 3} and report.events == len(
        stored.events
    )
    html = report.path.read_text()
    assert html.count('<img src="data:image/png;base64,') == 3 and "<script" not in html
    # A day without data still gives a report, with text-only charts.
    empty = await daily_report(pool, stored.settings, CRASH_DAY_MS + DAY_MS, tmp_path / "state")
    assert all(c.reason == "no data in window" for _, c in empty.charts) and empty.path.exists()
