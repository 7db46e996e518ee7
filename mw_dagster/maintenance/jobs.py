"""Maintenance jobs: `maintenance_job` (Dagster's own history) and `quality_checks_job` (hourly checks).

Neither materializes anything: one purges old ticks and runs, the other runs the data-quality
checks of the assets Dagster does not materialize on a schedule (`prices`, written by the stream,
and `headlines` between polls). The checks themselves live with their assets' domains.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import dagster as dg
from dagster import OpExecutionContext

from mw_dagster._compat import resolve_annotations

quality_checks_job = dg.define_asset_job(
    "quality_checks_job",
    selection=dg.AssetSelection.checks_for_assets("prices", "headlines"),
    description="Coverage, staleness and duplicate checks of prices and headlines.",
)


class MaintenanceConfig(dg.Config):
    """Retention of Dagster's own history (the `retention:` section of dagster.yaml covers the
    daemon's automatic tick purge; this job also removes old finished runs)."""

    tick_retention_days: int = 7
    run_retention_days: int = 30
    max_runs_deleted: int = 5000


FINISHED = [dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED]


@dg.op(description="Purge sensor/schedule ticks and finished runs older than the retention.")
@resolve_annotations
def purge_dagster_history(context: OpExecutionContext, config: MaintenanceConfig) -> dg.Output[int]:
    instance = context.instance
    now = time.time()
    tick_cutoff = now - config.tick_retention_days * 86400
    # An ephemeral instance (tests, `dagster dev` without DAGSTER_HOME) keeps no tick history.
    states = instance.all_instigator_state() if instance.schedule_storage is not None else []
    for state in states:
        instance.purge_ticks(state.instigator_origin_id, state.selector_id, before=tick_cutoff)
    run_cutoff = datetime.now(tz=UTC) - timedelta(days=config.run_retention_days)
    deleted = 0
    records = instance.get_run_records(
        filters=dg.RunsFilter(statuses=FINISHED, created_before=run_cutoff), limit=config.max_runs_deleted
    )
    for record in records:
        if record.dagster_run.run_id == context.run_id:
            continue
        instance.delete_run(record.dagster_run.run_id)
        deleted += 1
    context.log.info(
        "purged ticks older than %s days for %d instigators; deleted %d runs older than %s days",
        config.tick_retention_days,
        len(states),
        deleted,
        config.run_retention_days,
    )
    return dg.Output(
        deleted,
        metadata={
            "instigators": len(states),
            "tick_cutoff": datetime.fromtimestamp(tick_cutoff, tz=UTC).isoformat(),
            "runs_deleted": deleted,
            "run_cutoff": run_cutoff.isoformat(),
        },
    )


@dg.job(
    description="Daily housekeeping of the Dagster instance (ticks, old runs).", tags={"kind": "maintenance"}
)
def maintenance_job() -> None:
    purge_dagster_history()
