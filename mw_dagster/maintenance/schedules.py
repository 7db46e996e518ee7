"""Maintenance schedules: daily purge of Dagster's history, hourly data-quality checks."""

from __future__ import annotations

import dagster as dg

from mw_dagster.maintenance.jobs import maintenance_job, quality_checks_job


def _utc_schedule(
    job: dg.JobDefinition | dg.UnresolvedAssetJobDefinition, *, cron: str, description: str
) -> dg.ScheduleDefinition:
    """`<job name without _job>_schedule`: `job` on `cron` (UTC), running from the start."""
    return dg.ScheduleDefinition(
        name=job.name.removesuffix("_job") + "_schedule",
        job=job,
        cron_schedule=cron,
        execution_timezone="UTC",
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description=description,
    )


maintenance_schedule = _utc_schedule(
    maintenance_job, cron="30 3 * * *", description="Purge old ticks and runs daily at 03:30 UTC."
)
quality_checks_schedule = _utc_schedule(
    quality_checks_job,
    cron="5 * * * *",
    description="Hourly data-quality checks of prices (coverage, staleness, repeats) and headlines.",
)
