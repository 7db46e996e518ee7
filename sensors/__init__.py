"""Sensors of the Market Watch code location, built by `build_sensors` in `mw_dagster.definitions`.

- `rss_poll_sensor` (`sensors.rss`): conditional GETs of the feeds; requests a `headlines_job` run
  only for new items. Every ``MW_RSS_POLL_INTERVAL_S`` (default 60 s).
- `new_anomalies_sensor` (`sensors.anomalies`): walks `alert_events.id`; requests
  `alert_enrichments_job` runs for new alerts (open / escalate episode events). Every
  ``MW_ANOMALIES_POLL_INTERVAL_S`` (default 30 s).
- `service_health_sensor` (`sensors.health`): observes the price flow in PostgreSQL as
  `service_health` events, every minute.
- `orphaned_runs_sensor` (`sensors.runs`): fails runs whose worker died with the daemon and frees
  their slots. Every ``MW_ORPHANED_RUNS_INTERVAL_S`` (default 60 s).

A sensor's interval is part of its definition, so it is decided when the code location loads, from
the `Settings` the entry point built (which raises short intervals to the daemon's 5 s loop). Each
module holds one tick's logic as a plain function; this module turns them into definitions.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import dagster as dg

from mw_core.config import Settings
from mw_dagster._compat import resolve_annotations
from mw_dagster.alerts.jobs import alert_enrichments_job
from mw_dagster.news.jobs import headlines_job
from sensors import anomalies, health, rss, runs


def _running_sensor(
    name: str,
    fn: Callable[..., Any],
    *,
    interval_s: int,
    description: str,
    job: dg.UnresolvedAssetJobDefinition | None = None,
) -> dg.SensorDefinition:
    """A sensor that runs from the start (no manual switch-on after a deploy)."""
    return dg.sensor(
        name=name,
        job=job,
        minimum_interval_seconds=interval_s,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=description,
    )(resolve_annotations(fn))


def build_sensors(settings: Settings) -> list[dg.SensorDefinition]:
    """The code location's sensors, ticking at the intervals of `settings`."""
    return [
        _running_sensor(
            "rss_poll_sensor",
            rss.poll_feeds,
            job=headlines_job,
            interval_s=settings.rss_poll_interval_s,
            description="Polls the RSS/Atom feeds (conditional GET) and requests a headlines run for new items.",
        ),
        _running_sensor(
            "new_anomalies_sensor",
            anomalies.request_enrichments,
            job=alert_enrichments_job,
            interval_s=settings.anomalies_poll_interval_s,
            description="Requests an alert_enrichments run when the stream published new alerts "
            "(open / escalate episode events).",
        ),
        _running_sensor(
            "service_health_sensor",
            health.observe_price_flow,
            interval_s=health.INTERVAL_S,
            description="Observes the price flow (ticks/minute, newest tick age) as service_health events.",
        ),
        _running_sensor(
            "orphaned_runs_sensor",
            runs.fail_orphaned_runs,
            interval_s=settings.orphaned_runs_interval_s,
            description="Fails STARTED runs whose run worker process is gone and frees their concurrency slots.",
        ),
    ]


__all__ = ["build_sensors"]
