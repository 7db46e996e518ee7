"""`orphaned_runs_sensor`: fail runs whose run worker died, and free their concurrency slots.

Why: with Dagster's `DefaultRunLauncher` the run worker is a child process of the code server the
daemon spawned. When the daemon's process group dies at once (SIGKILL, OOM killer, a container
restart), in-flight runs stay ``STARTED`` for ever: that launcher cannot check its workers' health,
so run monitoring only cancels them after ``max_runtime_seconds`` (2 h). Until then they count
against ``max_concurrent_runs`` and keep their op-concurrency slots -- and with the ``llm`` pool
limited to one slot, every later `alert_enrichments` run stays queued ("blocked by global
concurrency limits"). The daemon chaos test (tests/chaos/test_dagster_daemon.py) shows exactly that.

What: every tick (``MW_ORPHANED_RUNS_INTERVAL_S``, default 60 s), for each ``STARTED`` run, look up
the run worker's pid (recorded on the run's ``RUN_START`` event) on this host. The worker is gone
when no such process exists, it is a zombie, or the pid now belongs to a process created after the
run started (pid reuse). Such a run is reported failed (`DagsterInstance.report_run_failed`, so
`rss_poll_sensor` re-requests its items) and its concurrency slots are freed.

Scope: only with `DefaultRunLauncher`, where the sensor (evaluated in the daemon's code server)
shares the host and pid namespace of the run workers; launchers that check worker health
themselves are left to run monitoring.
"""

from __future__ import annotations

import dagster as dg
from dagster import SensorEvaluationContext
from dagster._core.launcher import DefaultRunLauncher

from mw_core.adapters.processes import pid_alive

MAX_RUNS = 500  # STARTED runs inspected per tick
CLOCK_SLACK_S = 2.0  # process create_time vs the RUN_START event time


def worker_alive(pid: int, started_at: float) -> bool:
    """Whether `pid` is still the run worker that started at `started_at` (epoch seconds).

    A process created after the run started is a reuse of the pid; one we may not inspect counts
    as alive (`mw_core.adapters.processes.pid_alive`).
    """
    return pid_alive(pid, created_by=started_at + CLOCK_SLACK_S)


def _worker_pid(instance: dg.DagsterInstance, run_id: str) -> int | None:
    records = instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.RUN_START, limit=1).records
    event = records[0].event_log_entry.dagster_event if records else None
    return event.pid if event is not None else None


def fail_orphaned_runs(context: SensorEvaluationContext) -> dg.SkipReason:
    """One tick: fail the ``STARTED`` runs whose worker is gone, free their slots."""
    instance = context.instance
    launcher = instance.run_launcher
    if not isinstance(launcher, DefaultRunLauncher) or launcher.supports_check_run_worker_health:
        return dg.SkipReason(f"{type(launcher).__name__}: worker health is run monitoring's job")
    records = instance.get_run_records(
        filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED]), limit=MAX_RUNS
    )
    reaped: list[str] = []
    for record in records:
        run = record.dagster_run
        pid = _worker_pid(instance, run.run_id)
        if pid is None or record.start_time is None or worker_alive(pid, record.start_time):
            continue
        instance.report_run_failed(
            run, message=f"run worker (pid {pid}) is gone (killed with the daemon?): marked failed"
        )
        if instance.event_log_storage.supports_global_concurrency_limits:
            instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)
        context.log.warning(
            "run %s (%s): worker pid %d is gone; marked failed", run.run_id, run.job_name, pid
        )
        reaped.append(run.run_id)
    if reaped:
        return dg.SkipReason(f"failed {len(reaped)} orphaned runs: {', '.join(reaped)}")
    return dg.SkipReason(f"{len(records)} started runs, all workers alive")
