"""Infra assets: the database schema and the (externally reported) service health."""

from __future__ import annotations

import time

import dagster as dg
from dagster import AssetExecutionContext

from mw_core.adapters import db
from mw_dagster._compat import resolve_annotations
from mw_dagster.formatting import md_table
from mw_dagster.resources import PostgresResource


@dg.asset(group_name="infra", kinds={"postgres"}, code_version=str(db.SCHEMA_VERSION))
@resolve_annotations
def db_schema(context: AssetExecutionContext, postgres: PostgresResource) -> dg.MaterializeResult[None]:
    """The Market Watch PostgreSQL schema (tables, indexes, TimescaleDB policies when available).

    Applies the versioned migrations of `mw_core.adapters.db` idempotently (advisory-locked, so it is safe
    next to a running processor) and records the schema version, whether TimescaleDB is on, and
    every table's row count.
    """
    started = time.perf_counter()
    overview = postgres.apply_schema()
    elapsed = time.perf_counter() - started
    context.log.info(
        "schema v%s (timescale=%s, applied now=%s)",
        overview.version,
        overview.timescale,
        list(overview.applied),
    )
    return dg.MaterializeResult(
        metadata={
            "schema_version": overview.version,
            "timescale": overview.timescale,
            "migrations_applied_now": dg.MetadataValue.json(list(overview.applied)),
            "tables": dg.MetadataValue.md(md_table(["table", "rows"], sorted(overview.counts.items()))),
            **{f"rows_{name}": count for name, count in sorted(overview.counts.items())},
            "duration_s": round(elapsed, 3),
        }
    )


service_health = dg.AssetSpec(
    "service_health",
    group_name="infra",
    description=(
        "Health of the long-lived services (ingest, processor): observations reported from outside "
        "runs by `mw_dagster.health.report_service_health` and the `service_health_sensor` (prices "
        "flowing, newest tick age, anomalies in the last hour). Not materialized by Dagster."
    ),
    kinds={"service"},
)

prices = dg.AssetSpec(
    "prices",
    group_name="markets",
    deps=[db_schema],
    description=(
        "Ticks of every watched symbol, written continuously by the streaming processor "
        "(Binance -> Kafka -> processor -> PostgreSQL `prices`). External to Dagster: its checks "
        "watch coverage, staleness and re-sent frames."
    ),
    kinds={"postgres", "kafka"},
)
