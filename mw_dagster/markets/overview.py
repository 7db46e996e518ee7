"""The `market_overview` asset: the watched market at a glance, refreshed every 15 minutes.

One materialization = the market as of "now": a table per watched symbol (last price, 1 h and
24 h change, realized volatility, alerts today, open episode), the top movers, a chart of every
symbol normalised to 100 over the last 24 h with the alerts marked, and plain numbers the UI's
Plots tab graphs over time (`alerts_per_hour`, `tick_rate`, `open_episodes`). When the newest
stored tick is over 24 h old (a replayed day) "now" is that tick's time, and the metadata says so.
The computation is `mw_core.charts.reports.market_overview` (a fixed number of set-based queries).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

import dagster as dg
from dagster import AssetExecutionContext

from mw_dagster._compat import resolve_annotations
from mw_dagster.formatting import chart_metadata, charts_markdown, iso_ms, md_table
from mw_dagster.markets.assets import prices
from mw_dagster.resources import PostgresResource, build_settings


def rows_table(rows: Sequence[Mapping[str, object]], *, empty: str) -> str:
    """Display rows (`Overview.table()`: column -> text) as a markdown table of plain text."""
    if not rows:
        return empty
    header = list(rows[0])
    return md_table(header, [[row.get(c) for c in header] for row in rows])


@dg.asset(
    group_name="markets",
    deps=[prices, "alert_events"],
    kinds={"postgres", "python"},
)
@resolve_annotations
def market_overview(context: AssetExecutionContext, postgres: PostgresResource) -> dg.MaterializeResult[None]:
    """The watched market now: per-symbol table, top movers, a normalised 24 h chart with alerts.

    Reads `prices` and the stream's episode events (`alert_events`, `alert_episodes`) as of now
    (the newest tick for a replayed day, see `as_of_source`). The chart (`chart`, a PNG in markdown)
    shows every watched symbol normalised to 100 at the window start with its alerts marked;
    `alerts_per_hour`, `tick_rate` (ticks/s over 5 min) and `open_episodes` are plain numbers for
    the Plots tab. Refreshed by `market_overview_schedule` every 15 minutes.
    """
    settings = build_settings(postgres=postgres)
    wall_ms = int(time.time() * 1000)
    now_ms, replayed = postgres.overview_clock(settings=settings, wall_ms=wall_ms)
    ov = postgres.market_overview(settings=settings, now_ms=now_ms)
    source = (
        "newest tick: the data is over 24 h old (a replayed day), so the overview is as of its last tick"
        if replayed
        else "wall clock"
    )
    context.log.info(
        "market overview as of %s (%s): %d symbols, %d alerts in 24 h, chart %d bytes in %.0f ms",
        iso_ms(now_ms),
        source,
        len(ov.rows),
        len(ov.alerts),
        len(ov.chart.png),
        ov.chart.render_ms,
    )
    return dg.MaterializeResult(
        metadata={
            "as_of": f"{iso_ms(now_ms)} UTC",
            "as_of_source": source,
            "replayed": replayed,
            "symbols": len(ov.rows),
            "table": dg.MetadataValue.md(rows_table(ov.table(), empty="_no watched symbol_")),
            "top_movers": dg.MetadataValue.md(
                rows_table(ov.movers_table(), empty="_no symbol with 24 h of prices_")
            ),
            "chart": dg.MetadataValue.md(charts_markdown([(ov.chart.title, ov.chart)])),
            # Plain numbers: the UI's Plots tab graphs them across materializations.
            "alerts_per_hour": ov.metrics.alerts_per_hour,
            "tick_rate": float(ov.metrics.tick_rate),
            "open_episodes": ov.metrics.open_episodes,
            "alerts_24h": len(ov.alerts),
            **chart_metadata([ov.chart]),
            "chart_degraded": ov.chart.reason or "",
            "duration_ms": round(ov.seconds * 1000, 1),
        }
    )
