"""Sensors of the Market Watch code location (imported by `mw_dagster.definitions`).

- `rss_poll_sensor`: conditional GETs of the feeds; requests a `headlines` run only for new items.
- `new_anomalies_sensor`: walks `anomalies.id`; requests `alert_enrichments` runs for new ones.
- `service_health_sensor`: observes the price flow in PostgreSQL as `service_health` events.
- `orphaned_runs_sensor`: fails runs whose worker died with the daemon and frees their slots.

Tick intervals can be shortened through ``MW_*_INTERVAL_S`` variables (`sensors.intervals`).
"""

from __future__ import annotations

from sensors.anomalies import new_anomalies_sensor
from sensors.health import service_health_sensor
from sensors.rss import rss_poll_sensor
from sensors.runs import orphaned_runs_sensor

ALL_SENSORS = [rss_poll_sensor, new_anomalies_sensor, service_health_sensor, orphaned_runs_sensor]

__all__ = [
    "ALL_SENSORS",
    "new_anomalies_sensor",
    "orphaned_runs_sensor",
    "rss_poll_sensor",
    "service_health_sensor",
]
