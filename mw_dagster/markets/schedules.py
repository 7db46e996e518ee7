"""Markets schedules: `price_anomalies_schedule` and `market_report_schedule` (the day that just
ended), `market_overview_schedule` (every 15 minutes)."""

from __future__ import annotations

import dagster as dg

from mw_dagster.markets.jobs import market_overview_job, market_report_job, price_anomalies_job

# Daily partitions: at 00:15 UTC the day that just ended becomes the latest partition; the 15 minutes
# let the stream and the REST backfill land the day's last ticks first.
price_anomalies_schedule = dg.build_schedule_from_partitioned_job(
    price_anomalies_job,
    name="price_anomalies_schedule",
    hour_of_day=0,
    minute_of_hour=15,
    default_status=dg.DefaultScheduleStatus.RUNNING,
)

# The report of the day that just ended, after the late ticks (as above) and the episodes closed by them.
market_report_schedule = dg.build_schedule_from_partitioned_job(
    market_report_job,
    name="market_report_schedule",
    hour_of_day=0,
    minute_of_hour=20,
    default_status=dg.DefaultScheduleStatus.RUNNING,
)

market_overview_schedule = dg.ScheduleDefinition(
    name="market_overview_schedule",
    job=market_overview_job,
    cron_schedule="*/15 * * * *",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Refresh the market overview every 15 minutes.",
)
