"""Use cases behind the Dagster chart assets: alert charts, the market overview, the daily report.

Contract:
- Each function reads what it draws with a fixed number of set-based queries (see
  `mw_core.adapters.postgres.charts`), whatever the number of events or symbols, then renders
  with the pure builders. Dagster calls them under ``asyncio.run`` with a pool.
- Bad data never raises out of here: a window without data, a single tick or a gap gives a
  degraded chart with its `Chart.reason`; an event the builder cannot draw gets a reason string.
- `alert_charts` charts at most `cap` events (in the given order); the others get a reason.
- `market_overview` is "as of ``now_ms``": a replayed day can be looked at as it was.
- `chart_order` puts one alert per symbol first (a cap still covers every symbol);
  `overview_clock` picks the overview's "now" (the newest tick when the data is a replayed day).
- `daily_report` writes ``<state_dir>/reports/market-report-YYYY-MM-DD.html`` (self-contained,
  every text escaped) and returns its path with the charts.
Rendering is synchronous CPU work (~100-200 ms per chart); it runs on the caller's loop.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg

from mw_core.adapters.postgres import charts as repo
from mw_core.adapters.postgres.episodes import events_between
from mw_core.charts.alert import alert_chart, alert_window, window_label
from mw_core.charts.embed import ReportSection, write_report_html
from mw_core.charts.market import DAY_MS, day_chart, overview_chart
from mw_core.charts.model import Chart, MarketMetrics, OverviewRow
from mw_core.charts.render import pct
from mw_core.config import Settings
from mw_core.markets.episodes import EpisodeEvent
from mw_core.models import ms_to_dt

TOP_MOVERS = 5
REPORTS_DIR = "reports"
# What a matplotlib call raises on data it cannot draw; anything else is a bug and should surface.
_RENDER_ERRORS = (ValueError, OverflowError, RuntimeError, ZeroDivisionError)


async def alert_charts(
    pool: asyncpg.Pool, events: Sequence[EpisodeEvent], cap: int, *, now_ms: int | None = None
) -> list[tuple[EpisodeEvent, Chart | str]]:
    """One chart per event (the first `cap`), else a reason; in the order of `events`.

    Three queries for any number of events: the episodes' other events, the prices of every
    event's window, the related headlines.

    Args:
        pool: Pool on a database with the Market Watch schema.
        events: The alerts to chart (e.g. those just enriched).
        cap: Maximum number of charts rendered by this call.
        now_ms: The present; windows do not reach past it (default: unbounded).
    """
    chosen = list(events[: max(cap, 0)])
    out: list[tuple[EpisodeEvent, Chart | str]] = []
    if chosen:
        ids = {e.episode_id for e in chosen}
        around = await events_between(
            pool, start_ms=min(e.opened_ts for e in chosen), end_ms=max(e.ts for e in chosen) + 1
        )
        episode = [e for e in around if e.episode_id in ids]
        windows = [alert_window(e, episode, now_ms=now_ms) for e in chosen]
        longest = max(t1 - t0 for t0, t1 in windows)
        spans = [(e.symbol, t0, t1) for e, (t0, t1) in zip(chosen, windows, strict=True)]
        prices = await repo.price_windows(pool, spans, bucket_s=repo.auto_bucket_s(longest))
        news = await repo.headlines_between(
            pool,
            sorted({e.symbol for e in chosen}),
            min(t0 for t0, _ in windows),
            max(t1 for _, t1 in windows),
        )
        for e, window, pts in zip(chosen, windows, prices, strict=True):
            related = [h for h in news if e.symbol in h.symbols]
            try:
                out.append((e, alert_chart(e, pts, episode=episode, headlines=related, window=window)))
            except _RENDER_ERRORS as exc:
                out.append((e, f"chart not rendered: {type(exc).__name__}"))
    out += [(e, f"not charted: the per-run cap of {cap} charts was reached") for e in events[len(chosen) :]]
    return out


def chart_order(events: Sequence[EpisodeEvent]) -> list[EpisodeEvent]:
    """The newest alert of each symbol first, then the others; newest first within each part.

    So a per-run cap still charts every alerted symbol once before any symbol gets a second chart.
    """
    newest = sorted(events, key=lambda e: (-e.ts, e.symbol, e.seq))
    seen: set[str] = set()
    first: list[EpisodeEvent] = []
    rest: list[EpisodeEvent] = []
    for e in newest:
        (rest if e.symbol in seen else first).append(e)
        seen.add(e.symbol)
    return first + rest


async def overview_clock(pool: asyncpg.Pool, settings: Settings, wall_ms: int) -> tuple[int, bool]:
    """The overview's "now": `wall_ms`, or the newest tick when that is over 24 h old.

    Returns ``(now_ms, replayed)``: a replayed day (its ticks are days old) is looked at as of its
    last tick, so its chart is not an empty window of the present.
    """
    newest = await repo.newest_tick_ms(pool, list(settings.symbols))
    if newest is not None and newest < wall_ms - DAY_MS:
        return newest, True
    return wall_ms, False


@dataclass(frozen=True, slots=True)
class Overview:
    """The market as of `now_ms`: one row per watched symbol, the movers, a chart, the metrics."""

    now_ms: int
    rows: list[OverviewRow]
    top_movers: list[OverviewRow]
    chart: Chart
    metrics: MarketMetrics
    alerts: list[EpisodeEvent] = field(default_factory=list)  # open + escalate of the last 24 h
    seconds: float = 0.0

    def table(self) -> list[dict[str, object]]:
        """The per-symbol table as display rows (percentages as text, missing values as '—')."""
        return [overview_cells(r) for r in self.rows]

    def movers_table(self) -> list[dict[str, object]]:
        return [overview_cells(r) for r in self.top_movers]


def _pct_or_dash(value: float | None) -> str:
    return pct(value) if value is not None else "—"


def overview_cells(row: OverviewRow) -> dict[str, object]:
    """One overview row for a markdown or HTML table."""
    return {
        "symbol": row.symbol,
        "last price": f"{row.last_price:,.6g}" if row.last_price is not None else "—",
        "1 h": _pct_or_dash(row.change_1h),
        "24 h": _pct_or_dash(row.change_24h),
        "volatility (1 min, 24 h)": f"{row.volatility_24h * 100:.3f}%"
        if row.volatility_24h is not None
        else "—",
        "alerts today": row.alerts_today,
        "open episode": row.open_episode or "—",
    }


async def market_overview(pool: asyncpg.Pool, settings: Settings, now_ms: int) -> Overview:
    """The watched market over the 24 h before `now_ms` (4 queries, 1 chart)."""
    started = time.perf_counter()
    symbols = list(settings.symbols)
    t0, t1 = now_ms - DAY_MS, now_ms + 1  # `now` itself belongs to the window
    rows = await repo.overview_rows(pool, symbols, now_ms)
    metrics = await repo.market_metrics(pool, symbols, now_ms)
    series = await repo.price_series(pool, symbols, t0, t1)
    watched = set(symbols)
    alerts = [
        e
        for e in await events_between(pool, start_ms=t0, end_ms=t1)
        if e.symbol in watched and e.kind != "close"
    ]
    chart = overview_chart(series, alerts, window=(t0, t1))
    movers = sorted((r for r in rows if r.change_24h is not None), key=lambda r: -abs(r.change_24h or 0.0))
    return Overview(
        now_ms=now_ms,
        rows=rows,
        top_movers=movers[:TOP_MOVERS],
        chart=chart,
        metrics=metrics,
        alerts=alerts,
        seconds=time.perf_counter() - started,
    )


@dataclass(frozen=True, slots=True)
class Report:
    """The daily report: one chart per symbol, the HTML file written, counts."""

    day: str  # YYYY-MM-DD (UTC)
    path: Path
    charts: list[tuple[str, Chart]]
    episodes: dict[str, int]  # symbol -> episodes touching the day
    events: int
    seconds: float = 0.0


def _event_cells(e: EpisodeEvent) -> dict[str, object]:
    return {
        "time (UTC)": ms_to_dt(e.ts).strftime("%H:%M:%S"),
        "kind": e.kind,
        "episode": e.episode_id,
        "move": f"{pct(e.ret)} in {window_label(e.window_s)}",
        "price": f"{e.price:,.6g}",
    }


def report_path(state_dir: Path, day_start_ms: int) -> Path:
    return Path(state_dir) / REPORTS_DIR / f"market-report-{ms_to_dt(day_start_ms):%Y-%m-%d}.html"


async def daily_report(pool: asyncpg.Pool, settings: Settings, day_start_ms: int, state_dir: Path) -> Report:
    """Charts of every watched symbol's UTC day with its episodes, written as one HTML file.

    Args:
        pool: Pool on a database with the Market Watch schema.
        settings: Its `symbols` are the symbols reported.
        day_start_ms: Any instant of the day (rounded down to 00:00 UTC).
        state_dir: The report goes to ``state_dir/reports/``.
    """
    started = time.perf_counter()
    day0 = day_start_ms - day_start_ms % DAY_MS
    symbols = list(settings.symbols)
    series = await repo.price_series(pool, symbols, day0, day0 + DAY_MS, bucket_s=60)
    events = await events_between(pool, start_ms=day0, end_ms=day0 + DAY_MS)
    by_symbol: dict[str, list[EpisodeEvent]] = defaultdict(list)
    for e in events:
        by_symbol[e.symbol].append(e)
    charts: list[tuple[str, Chart]] = []
    sections: list[ReportSection] = []
    for symbol in symbols:
        mine = by_symbol.get(symbol, [])
        chart = day_chart(symbol, series.get(symbol, []), mine, day_start_ms=day0)
        charts.append((symbol, chart))
        closing = [e.summary for e in mine if e.kind == "close"]
        sections.append(
            ReportSection(heading=symbol, chart=chart, notes=closing, table=[_event_cells(e) for e in mine])
        )
    day = f"{ms_to_dt(day0):%Y-%m-%d}"
    path = write_report_html(
        report_path(state_dir, day0), f"Market Watch daily report · {day} (UTC)", sections
    )
    return Report(
        day=day,
        path=path,
        charts=charts,
        episodes={s: len({e.episode_id for e in by_symbol.get(s, [])}) for s in symbols},
        events=len(events),
        seconds=time.perf_counter() - started,
    )
