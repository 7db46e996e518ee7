"""Path-dependent schema steps: TimescaleDB features, or their portable stand-ins. Each runs once.

Contract:
- A database takes one of two paths, decided by whether the `timescaledb` extension is available:
  ``timescale`` (hypertables, compression, retention, the continuous aggregate ``prices_1m``) or
  ``portable`` (BRIN time indexes and a ``date_bin`` view ``prices_1m``). Each path is a list of
  versioned `FeatureStep`s, recorded in ``schema_features (feature, version)`` when applied, so a
  step runs once per database: the Timescale DDL (``ALTER TABLE ... SET (timescaledb.compress ...)``
  takes an ACCESS EXCLUSIVE lock on a hypertable) no longer runs on every processor start and every
  ``db_schema`` materialization.
- Why a table of its own and not ids in ``schema_version``: the core migrations are one linear
  history every database shares (``SCHEMA_VERSION`` is its last id); these steps depend on the
  server, and a database that gains the extension later takes the Timescale steps on top of the
  portable ones. Separate (feature, version) keys keep both histories readable and free of id clashes.
- `apply_transactional_steps(conn, timescale)` runs inside `apply_schema`'s transaction, after the
  core migrations, under its advisory lock. `apply_after_commit_steps(pool, timescale)` runs the
  steps that PostgreSQL forbids in a transaction block (``CALL refresh_continuous_aggregate``), each
  under a session advisory lock and recorded only after it succeeded.
- Steps are safe on volumes where earlier releases ran the same DDL unrecorded on every start:
  ``if_not_exists`` everywhere, compression enabled only when it is not yet, a plain ``prices_1m``
  view (portable path) replaced only when it is not already a continuous aggregate.
- All SQL is static text; the policy intervals are module constants, never values.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import asyncpg

log = logging.getLogger(__name__)

FEATURE_LOCK_ID = 7_246_771_002  # pg_advisory_lock key for the after-commit steps
# Compression must not touch chunks a backfill may still write into (REST backfill covers at most
# ~1000 minutes; Dagster backfills re-read days): compress after 30 days, keep 2 years.
COMPRESS_AFTER = "30 days"
RETENTION = "730 days"

FEATURES_TABLE_SQL = """
    CREATE TABLE IF NOT EXISTS schema_features (
        feature      text         NOT NULL,
        version      integer      NOT NULL,
        description  text         NOT NULL,
        applied_at   timestamptz  NOT NULL DEFAULT now(),
        PRIMARY KEY (feature, version)
    )
"""


@dataclass(frozen=True, slots=True)
class FeatureStep:
    version: int
    description: str
    statements: tuple[str, ...]
    # False: PostgreSQL refuses the statements inside a transaction block (CALL refresh_...).
    in_transaction: bool = True


# Compression enabled only when it is not yet (earlier releases did it on every start, unrecorded).
# Spelled out per table: all SQL is static text. Segment by symbol and order by the rest of the
# primary key, so ON CONFLICT checks against compressed chunks find a key within one segment.
_COMPRESS_PRICES = """
    DO $$
    BEGIN
        IF NOT EXISTS (
            SELECT 1 FROM timescaledb_information.hypertables
            WHERE hypertable_schema = current_schema() AND hypertable_name = 'prices'
              AND compression_enabled
        ) THEN
            ALTER TABLE prices SET (timescaledb.compress, timescaledb.compress_segmentby = 'symbol',
                timescaledb.compress_orderby = 'ts');
        END IF;
    END
    $$
"""
_COMPRESS_METRICS = """
    DO $$
    BEGIN
        IF NOT EXISTS (
            SELECT 1 FROM timescaledb_information.hypertables
            WHERE hypertable_schema = current_schema() AND hypertable_name = 'metrics'
              AND compression_enabled
        ) THEN
            ALTER TABLE metrics SET (timescaledb.compress, timescaledb.compress_segmentby = 'symbol',
                timescaledb.compress_orderby = 'ts, window_s');
        END IF;
    END
    $$
"""


TIMESCALE_STEPS: tuple[FeatureStep, ...] = (
    FeatureStep(
        1,
        "hypertables prices + metrics; prices compressed after 30 days; retention 730 days; "
        "continuous aggregate prices_1m with its refresh policy",
        (
            "CREATE EXTENSION IF NOT EXISTS timescaledb",
            "SELECT create_hypertable('prices', by_range('ts', INTERVAL '1 day'), if_not_exists => TRUE, migrate_data => TRUE)",
            "SELECT create_hypertable('metrics', by_range('ts', INTERVAL '1 day'), if_not_exists => TRUE, migrate_data => TRUE)",
            _COMPRESS_PRICES,
            f"SELECT add_compression_policy('prices', compress_after => INTERVAL '{COMPRESS_AFTER}', if_not_exists => TRUE)",
            f"SELECT add_retention_policy('prices', drop_after => INTERVAL '{RETENTION}', if_not_exists => TRUE)",
            f"SELECT add_retention_policy('metrics', drop_after => INTERVAL '{RETENTION}', if_not_exists => TRUE)",
            # A database that ran the portable path before the extension was installed has a plain
            # view of that name; a continuous aggregate (also a view in pg_class) is kept.
            """
            DO $$
            BEGIN
                IF EXISTS (
                    SELECT 1 FROM pg_views WHERE schemaname = current_schema() AND viewname = 'prices_1m'
                ) AND NOT EXISTS (
                    SELECT 1 FROM timescaledb_information.continuous_aggregates
                    WHERE view_schema = current_schema() AND view_name = 'prices_1m'
                ) THEN
                    DROP VIEW prices_1m;
                END IF;
            END
            $$
            """,
            """
            CREATE MATERIALIZED VIEW IF NOT EXISTS prices_1m WITH (timescaledb.continuous) AS
                SELECT symbol, time_bucket(INTERVAL '1 minute', ts) AS bucket,
                       first(price, ts) AS open, max(price) AS high, min(price) AS low,
                       last(price, ts) AS close, count(*) AS n
                FROM prices GROUP BY symbol, bucket WITH NO DATA
            """,
            """SELECT add_continuous_aggregate_policy('prices_1m', start_offset => INTERVAL '1 day',
                   end_offset => INTERVAL '1 minute', schedule_interval => INTERVAL '1 minute', if_not_exists => TRUE)""",
        ),
    ),
    FeatureStep(
        2,
        "metrics compressed like prices; prices_1m real-time (materialized_only = false, as the portable view)",
        (
            _COMPRESS_METRICS,
            f"SELECT add_compression_policy('metrics', compress_after => INTERVAL '{COMPRESS_AFTER}', if_not_exists => TRUE)",
            # Real-time aggregation: the newest minute (not yet materialized) is read from `prices`,
            # so the aggregate answers like the portable view. TimescaleDB >= 2.13 defaults to true.
            "ALTER MATERIALIZED VIEW prices_1m SET (timescaledb.materialized_only = false)",
        ),
    ),
    FeatureStep(
        3,
        "first refresh of prices_1m over all existing rows (the policy only looks back 1 day)",
        # Without it, rows older than the policy's window (history, a backfill before the aggregate
        # existed) would stay below the materialization watermark and never appear in prices_1m.
        ("CALL refresh_continuous_aggregate('prices_1m', NULL, NULL)",),
        in_transaction=False,
    ),
)

PORTABLE_STEPS: tuple[FeatureStep, ...] = (
    FeatureStep(
        1,
        "BRIN time indexes on prices + metrics; portable date_bin view prices_1m",
        (
            # BRIN: ticks arrive in time order, so a block-range index serves time-range scans at a
            # fraction of a btree's write cost (the (symbol, ts) primary key serves per-symbol reads).
            "CREATE INDEX IF NOT EXISTS prices_ts_brin ON prices USING brin (ts)",
            "CREATE INDEX IF NOT EXISTS metrics_ts_brin ON metrics USING brin (ts)",
            """
            CREATE OR REPLACE VIEW prices_1m AS
                SELECT symbol, date_bin(INTERVAL '1 minute', ts, TIMESTAMPTZ '2000-01-01') AS bucket,
                       (array_agg(price ORDER BY ts))[1] AS open, max(price) AS high, min(price) AS low,
                       (array_agg(price ORDER BY ts DESC))[1] AS close, count(*) AS n
                FROM prices GROUP BY symbol, bucket
            """,
        ),
    ),
)


def steps_for(timescale: bool) -> tuple[str, tuple[FeatureStep, ...]]:
    """The feature name and its steps for the path this database takes."""
    return ("timescale", TIMESCALE_STEPS) if timescale else ("portable", PORTABLE_STEPS)


async def timescale_available(conn: asyncpg.Connection) -> bool:
    row = await conn.fetchval("SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'")
    return row is not None


async def _done(conn: asyncpg.Connection, feature: str) -> set[int]:
    rows = await conn.fetch("SELECT version FROM schema_features WHERE feature = $1", feature)
    return {int(r["version"]) for r in rows}


async def _record(conn: asyncpg.Connection, feature: str, step: FeatureStep) -> None:
    await conn.execute(
        "INSERT INTO schema_features (feature, version, description) VALUES ($1, $2, $3)",
        feature,
        step.version,
        step.description,
    )


async def apply_transactional_steps(conn: asyncpg.Connection, timescale: bool) -> list[str]:
    """Run the path's pending in-transaction steps (caller holds the transaction and the lock).

    Returns ``feature:version`` of the steps applied. Stops at the first after-commit step, so
    steps keep their order.
    """
    # Checked, not CREATE ... IF NOT EXISTS: a start with nothing to do runs no DDL at all.
    if await conn.fetchval("SELECT to_regclass('schema_features')") is None:
        await conn.execute(FEATURES_TABLE_SQL)
    feature, steps = steps_for(timescale)
    done = await _done(conn, feature)
    applied: list[str] = []
    for step in steps:
        if step.version in done:
            continue
        if not step.in_transaction:
            break
        for sql in step.statements:
            await conn.execute(sql)
        await _record(conn, feature, step)
        applied.append(f"{feature}:{step.version}")
    return applied


async def apply_after_commit_steps(pool: asyncpg.Pool, timescale: bool) -> list[str]:
    """Run the path's pending steps that cannot run in a transaction, then any steps after them."""
    feature, steps = steps_for(timescale)
    applied: list[str] = []
    async with pool.acquire() as conn:
        await conn.execute("SELECT pg_advisory_lock($1)", FEATURE_LOCK_ID)
        try:
            done = await _done(conn, feature)
            for step in steps:
                if step.version in done:
                    continue
                if step.in_transaction:
                    async with conn.transaction():
                        for sql in step.statements:
                            await conn.execute(sql)
                        await _record(conn, feature, step)
                else:
                    for sql in step.statements:
                        await conn.execute(sql)  # autocommit: no transaction block around it
                    await _record(conn, feature, step)
                applied.append(f"{feature}:{step.version}")
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", FEATURE_LOCK_ID)
    return applied
