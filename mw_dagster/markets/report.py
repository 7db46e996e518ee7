"""The `market_report` asset: one UTC day of the watched market, as charts and as an HTML file.

One partition = one day (the `price_anomalies` partitions): a chart per watched symbol of that day
with its alert episodes shaded and their events marked, embedded in the markdown metadata, and the
same report written as one self-contained HTML file under the state directory
(``<MW_STATE_DIR>/reports/market-report-YYYY-MM-DD.html``), whose path is in the metadata. The
computation is `mw_core.charts.reports.daily_report`; re-running a day rewrites its file.
"""

from __future__ import annotations

import dagster as dg
from dagster import AssetExecutionContext

from mw_dagster._compat import resolve_annotations
from mw_dagster.formatting import chart_metadata, charts_markdown
from mw_dagster.markets.assets import prices
from mw_dagster.markets.partitions import partition_bounds_ms, price_anomalies_partitions
from mw_dagster.resources import PostgresResource, build_settings


@dg.asset(
    group_name="markets",
    partitions_def=price_anomalies_partitions,
    deps=[prices, "alert_events"],
    kinds={"postgres", "html"},
)
@resolve_annotations
def market_report(context: AssetExecutionContext, postgres: PostgresResource) -> dg.MaterializeResult[None]:
    """The daily report of one UTC day: a chart per watched symbol with its episodes, and an HTML file.

    Reads the day's `prices` (one point per minute) and the stream's episode events of the day
    (`alert_events`). `charts` shows one chart per symbol (episodes shaded from open to close,
    their events numbered); `report_path` is the self-contained HTML file with the same charts and
    each symbol's events, under ``<MW_STATE_DIR>/reports/``.
    """
    settings = build_settings(postgres=postgres)
    key = context.partition_key
    start_ms, _ = partition_bounds_ms(price_anomalies_partitions.time_window_for_partition_key(key))
    report = postgres.daily_report(
        settings=settings, day_start_ms=start_ms, state_dir=settings.state_dir.resolve()
    )
    context.log.info(
        "report %s: %d charts, %d episode events, written to %s in %.2fs",
        report.day,
        len(report.charts),
        report.events,
        report.path,
        report.seconds,
    )
    items = [
        (f"{symbol} · {report.day} · {_episodes(report.episodes.get(symbol, 0))}", chart)
        for symbol, chart in report.charts
    ]
    degraded = {symbol: chart.reason for symbol, chart in report.charts if chart.reason}
    return dg.MaterializeResult(
        metadata={
            "day": report.day,
            "report_path": dg.MetadataValue.path(str(report.path)),
            "report_kb": round(report.path.stat().st_size / 1024, 1),
            "charts": dg.MetadataValue.md(charts_markdown(items, empty="_no watched symbol_")),
            "episodes": sum(report.episodes.values()),
            "episodes_by_symbol": dg.MetadataValue.json(report.episodes),
            "episode_events": report.events,
            "degraded_charts": dg.MetadataValue.json(degraded),
            **chart_metadata([chart for _, chart in report.charts]),
            "duration_ms": round(report.seconds * 1000, 1),
        }
    )


def _episodes(n: int) -> str:
    return f"{n} episode" if n == 1 else f"{n} episodes"
