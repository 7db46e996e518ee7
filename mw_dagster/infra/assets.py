"""Infra assets: `db_schema` (the PostgreSQL schema) and `service_health` (reported from outside runs)."""

from __future__ import annotations

import time

import dagster as dg
from dagster import AssetExecutionContext

from mw_core.adapters.postgres.schema import SCHEMA_VERSION
from mw_dagster._compat import resolve_annotations
from mw_dagster.formatting import md_table
from mw_dagster.resources import PostgresResource


@dg.asset(group_name="infra", kinds={"postgres"}, code_version=str(SCHEMA_VERSION))
@resolve_annotations
def db_schema(context: AssetExecutionContext, postgres: PostgresResource) -> dg.MaterializeResult[None]:
    """The Market Watch PostgreSQL schema (tables, indexes, TimescaleDB policies when available).

    Applies the versioned migrations of `mw_core.adapters.postgres.schema` idempotently (advisory-locked, so it is safe
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
        "Health of the price flow (ingest -> Kafka -> processor -> `prices`): observed every minute by "
        "`service_health_sensor` (ticks in the last minute, newest tick age, anomalies in the last "
        "hour). Any process can add its own report through "
        "`mw_dagster.infra.health.report_service_health`. Not materialized by Dagster."
    ),
    kinds={"service"},
)
