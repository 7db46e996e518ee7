"""Markets schedules: `price_anomalies_schedule` and `market_report_schedule` (the day that just
ended), `market_overview_schedule` (every 15 minutes)."""

from __future__ import annotations

from typing import Any

import dagster as dg

from mw_dagster.markets.jobs import market_overview_job, market_report_job, price_anomalies_job


def _after_midnight(
    job: dg.UnresolvedAssetJobDefinition, minute: int
) -> Any:  # a schedule, or Dagster's private unresolved one for asset jobs
    """The day that just ended, `minute` minutes after midnight UTC (its partition is then the latest)."""
    return dg.build_schedule_from_partitioned_job(
        job,
        name=f"{job.name.removesuffix('_job')}_schedule",
        hour_of_day=0,
        minute_of_hour=minute,
        default_status=dg.DefaultScheduleStatus.RUNNING,
    )


# 00:15 lets the stream and the REST backfill land the day's last ticks first; the report follows at
# 00:20, after the episodes those late ticks closed.
price_anomalies_schedule = _after_midnight(price_anomalies_job, 15)
market_report_schedule = _after_midnight(market_report_job, 20)

market_overview_schedule = dg.ScheduleDefinition(
    name="market_overview_schedule",
    job=market_overview_job,
    cron_schedule="*/15 * * * *",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Refresh the market overview every 15 minutes.",
)
