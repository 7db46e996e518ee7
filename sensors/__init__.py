"""Sensors of the Market Watch code location (imported by `mw_dagster.definitions`).

- `rss_poll_sensor`: conditional GETs of the feeds; requests a `headlines` run only for new items.
- `new_anomalies_sensor`: walks `anomalies.id`; requests `alert_enrichments` runs for new ones.
- `service_health_sensor`: observes the price flow in PostgreSQL as `service_health` events.
"""

from __future__ import annotations

from sensors.anomalies import new_anomalies_sensor
from sensors.health import service_health_sensor
from sensors.rss import rss_poll_sensor

ALL_SENSORS = [rss_poll_sensor, new_anomalies_sensor, service_health_sensor]

__all__ = ["ALL_SENSORS", "new_anomalies_sensor", "rss_poll_sensor", "service_health_sensor"]
