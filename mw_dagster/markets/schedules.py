"""Markets schedules: `price_anomalies_schedule`, the day that just ended."""

from __future__ import annotations

import dagster as dg

from mw_dagster.markets.jobs import price_anomalies_job

# Daily partitions: at 00:15 UTC the day that just ended becomes the latest partition; the 15 minutes
# let the stream and the REST backfill land the day's last ticks first.
price_anomalies_schedule = dg.build_schedule_from_partitioned_job(
    price_anomalies_job,
    name="price_anomalies_schedule",
    hour_of_day=0,
    minute_of_hour=15,
    default_status=dg.DefaultScheduleStatus.RUNNING,
)
