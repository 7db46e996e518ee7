"""The `market_backtest` asset: the exact stream analysis + episode policy over one stored day.

People compare alerting settings in the UI: materialize a day with a run config such as
``{"overrides": {"episode_escalation_step": "2.0"}, "compare": {"scoring": "adaptive"}}``
and read the per-symbol table (detections, alerts, first-move lag, largest move alerted, worst
hour) side by side. The computation is `mw_core.batch.backtest` (no Kafka, no services), the same
code `mw backtest --from-db` runs.
"""

from __future__ import annotations

from typing import Any

import dagster as dg
from dagster import AssetExecutionContext
from pydantic import Field

from mw_core.batch.backtest import BacktestOptions, BacktestRun, backtest_day
from mw_dagster._compat import resolve_annotations
from mw_dagster.formatting import md_table
from mw_dagster.markets.assets import prices
from mw_dagster.markets.partitions import price_anomalies_partitions
from mw_dagster.resources import PostgresResource, build_settings

SHOWN = [
    "symbol",
    "detections",
    "alerts",
    "opens",
    "escalations",
    "moves",
    "first_move_lag_s",
    "largest_move_alerted",
    "worst_hour_alerts",
]


class BacktestConfig(dg.Config):  # type: ignore[misc]
    """Settings to try (Settings field names or MW_ variable names -> values as text)."""

    overrides: dict[str, str] = Field(default_factory=dict, description="Applied to the run (like --set).")
    compare: dict[str, str] = Field(default_factory=dict, description="A second run: overrides + these.")
    move_pct: float = Field(default=3.0, description="A move: |5-minute return| of at least this many %.")


def _table(run: BacktestRun) -> str:
    rows = run.day_rows()
    return md_table(SHOWN, [tuple("" if r.get(c) is None else str(r.get(c)) for c in SHOWN) for r in rows])


@dg.asset(
    group_name="markets",
    partitions_def=price_anomalies_partitions,
    deps=[prices],
    kinds={"postgres", "pandas"},
    code_version="1",
)
@resolve_annotations
def market_backtest(
    context: AssetExecutionContext, config: BacktestConfig, postgres: PostgresResource
) -> dg.MaterializeResult[None]:
    """The alerting of one UTC day replayed from `prices` with chosen settings (no Kafka, no services).

    Runs THE analysis path and the episode policy the processor runs over the day's stored ticks
    and reports, per symbol: raw detections, alerts a person would get (opens + escalations), the
    first-alert lag after the first 3 % five-minute move, whether the day's largest move was
    alerted, and the alerts of the worst hour. With ``compare`` a second configuration is shown
    next to the first. Nothing is written: it is a what-if.
    """
    settings = build_settings(postgres=postgres)
    options = BacktestOptions(
        overrides=config.overrides, compare=config.compare or None, move_pct=config.move_pct
    )
    run = backtest_day(postgres.database_url, settings, context.partition_key, options)
    summary = run.summary()
    meta: dict[str, Any] = {
        "config": dg.MetadataValue.json(run.config),
        "per_symbol": dg.MetadataValue.md(
            _table(run) if not run.days.empty else "_no prices stored for this day_"
        ),
        **{k: v for k, v in summary.items() if isinstance(v, int | float) and v is not None},
    }
    if run.compare is not None:
        other = run.compare.summary()
        meta["compare_config"] = dg.MetadataValue.json(run.compare.config)
        meta["compare_per_symbol"] = dg.MetadataValue.md(_table(run.compare))
        meta.update(
            {f"compare_{k}": v for k, v in other.items() if isinstance(v, int | float) and v is not None}
        )
    context.log.info("backtest %s: %s", context.partition_key, summary)
    return dg.MaterializeResult(metadata=meta)
