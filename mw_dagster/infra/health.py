"""Report the health of long-lived services to Dagster as `service_health` observations.

Contract:
- `report_service_health(target, service=..., status=..., metrics=...)` records one runless
  `AssetObservation` of the external asset ``service_health``: ``target`` is a `DagsterInstance`
  (in-process, e.g. a sensor or a test) or the webserver's base URL (``http://127.0.0.1:3000``), in
  which case it POSTs to the webserver's ``/report_asset_observation/service_health`` REST endpoint.
- The URL path needs only httpx, so a service process does not need a Dagster instance; dagster
  itself is imported lazily (and only for the instance path).
- Metadata values are plain JSON scalars. ``service`` is both a metadata entry and a tag, so the
  reports of several services (today `service_health_sensor`'s view of ``prices`` in PostgreSQL)
  sit side by side in the one asset's history.
- `flow_metrics` turns the PostgreSQL view of the price flow into a status and metrics.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Literal

import httpx

if TYPE_CHECKING:
    from dagster import AssetObservation, DagsterInstance

    from mw_core.adapters.postgres.quality import PriceFlow

ASSET_KEY = "service_health"
Status = Literal["ok", "degraded", "down"]
Scalar = str | int | float | bool | None


def _metadata(service: str, status: Status, metrics: Mapping[str, Scalar]) -> dict[str, Scalar]:
    out: dict[str, Scalar] = {"service": service, "status": status, "reported_at": round(time.time(), 3)}
    for key, value in metrics.items():
        if isinstance(value, str | int | float | bool) or value is None:
            out[str(key)] = value
    return out


def report_service_health(
    target: DagsterInstance | str,
    *,
    service: str,
    status: Status = "ok",
    metrics: Mapping[str, Scalar] | None = None,
    description: str | None = None,
    timeout_s: float = 5.0,
) -> None:
    """Record one `service_health` observation (see the module docstring).

    Args:
        target: A `DagsterInstance`, or the webserver base URL.
        service: Reporting service, e.g. ``"processor"``.
        status: ``ok`` / ``degraded`` / ``down``.
        metrics: Scalar numbers to show (ticks per minute, newest tick age, lag ...).
        description: Free text shown with the observation.
        timeout_s: HTTP timeout for the URL path.

    Raises:
        httpx.HTTPError: The webserver could not be reached or refused the report.
    """
    metadata = _metadata(service, status, metrics or {})
    text = description or f"{service}: {status}"
    if isinstance(target, str):
        response = httpx.post(
            target.rstrip("/") + f"/report_asset_observation/{ASSET_KEY}",
            json={"metadata": metadata, "description": text},
            timeout=timeout_s,
        )
        response.raise_for_status()
        return
    target.report_runless_asset_event(
        observation(service=service, status=status, metrics=metrics, description=text)
    )


def observation(
    *,
    service: str,
    status: Status,
    metrics: Mapping[str, Scalar] | None = None,
    description: str | None = None,
) -> AssetObservation:
    """The `service_health` observation for one report (what sensors put in `SensorResult`)."""
    import dagster as dg

    return dg.AssetObservation(
        asset_key=ASSET_KEY,
        description=description or f"{service}: {status}",
        metadata=_metadata(service, status, metrics or {}),
        tags={"service": service},
    )


def flow_metrics(flow: PriceFlow, *, now_ms: int) -> tuple[Status, dict[str, Scalar]]:
    """Status + metrics of the price flow as seen in PostgreSQL (used by `service_health_sensor`)."""
    age_s = None if flow.newest_ts is None else round((now_ms - flow.newest_ts) / 1000, 1)
    if flow.ticks > 0:
        status: Status = "ok"
    elif age_s is not None and age_s < 600:
        status = "degraded"
    else:
        status = "down"
    return status, {
        f"ticks_last_{flow.window_s}s": flow.ticks,
        "symbols_flowing": flow.symbols,
        "newest_tick_age_s": age_s,
        "anomalies_last_hour": flow.anomalies_last_hour,
    }
