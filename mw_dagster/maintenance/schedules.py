"""Schedules: the latest `price_anomalies` day, and the daily maintenance."""

from __future__ import annotations

import dagster as dg

from mw_dagster.jobs import maintenance_job, price_anomalies_job, quality_checks_job

# Daily partitions: at 00:15 UTC the day that just ended becomes the latest partition; the 15 minutes
# let the stream and the REST backfill land the day's last ticks first.
price_anomalies_schedule = dg.build_schedule_from_partitioned_job(
    price_anomalies_job,
    name="price_anomalies_schedule",
    hour_of_day=0,
    minute_of_hour=15,
    default_status=dg.DefaultScheduleStatus.RUNNING,
)

maintenance_schedule = dg.ScheduleDefinition(
    name="maintenance_schedule",
    job=maintenance_job,
    cron_schedule="30 3 * * *",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Purge old ticks and runs daily at 03:30 UTC.",
)

quality_checks_schedule = dg.ScheduleDefinition(
    name="quality_checks_schedule",
    job=quality_checks_job,
    cron_schedule="5 * * * *",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Hourly data-quality checks of prices (coverage, staleness, repeats) and headlines.",
)
