"""`service_health_sensor`: the price flow as seen in PostgreSQL, as `service_health` observations.

Runs every minute without launching runs: it reads ticks of the last minute, the newest tick's
age and the last hour's anomalies, and records them as an observation of the external
``service_health`` asset, so the UI shows whether prices are flowing even when no service reports.
"""

from __future__ import annotations

import time

import dagster as dg
from dagster import SensorEvaluationContext

from mw_core.batch.partition import DatabaseErrors
from mw_dagster.infra.health import flow_metrics, observation
from mw_dagster.resources import PostgresResource

INTERVAL_S = 60  # the observation covers the last minute of ticks


def observe_price_flow(context: SensorEvaluationContext, postgres: PostgresResource) -> dg.SensorResult:
    """One tick: a `service_health` observation of the last minute's price flow."""
    now = int(time.time() * 1000)
    try:
        flow = postgres.price_flow(now_ms=now, window_s=INTERVAL_S)
    except DatabaseErrors as exc:
        # No database, or no schema yet: that IS the health information (prices are not flowing).
        reason = f"{type(exc).__name__}: {exc}"[:300]
        return dg.SensorResult(
            asset_events=[observation(service="prices", status="down", metrics={"error": reason})],
            skip_reason=f"prices down: {reason}",
        )
    status, metrics = flow_metrics(flow, now_ms=now)
    context.log.info("price flow %s: %s", status, metrics)
    return dg.SensorResult(
        asset_events=[observation(service="prices", status=status, metrics=metrics)],
        skip_reason=f"prices {status}: {flow.ticks} ticks in the last minute",
    )
