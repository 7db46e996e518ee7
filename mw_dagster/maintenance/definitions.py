"""The maintenance domain's definitions, merged by `mw_dagster.definitions`."""

from __future__ import annotations

import dagster as dg

from mw_dagster.maintenance.jobs import maintenance_job, quality_checks_job
from mw_dagster.maintenance.schedules import maintenance_schedule, quality_checks_schedule

defs = dg.Definitions(
    jobs=[maintenance_job, quality_checks_job],
    schedules=[maintenance_schedule, quality_checks_schedule],
)
