"""PostgreSQL / TimescaleDB schema: versioned migrations, applied idempotently.

Contract:
- `apply_schema(pool)` is idempotent and safe to run concurrently (advisory lock); it records every
  applied migration in `schema_version`. With the `timescaledb` extension available it turns the
  time-series tables into hypertables with compression and retention policies and a continuous
  aggregate; without it, plain tables + (symbol, ts) indexes and a portable `date_bin` view. Which
  path was taken is logged and returned.
- The tables' natural keys (primary keys / unique constraints) are what make the repositories'
  writes (`prices`, `anomalies`, `mw_core.news.store`, `mw_core.enrich.store`) idempotent.
- `table_counts` reads row counts of the fixed `TABLES` allow-list only.
- All SQL is static text; the Timescale policy intervals are module constants, never values.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

import asyncpg

log = logging.getLogger(__name__)

SCHEMA_LOCK_ID = 7_246_771_001  # pg_advisory_xact_lock key for migrations
# Compression must not touch chunks a backfill may still write into (REST backfill covers at most
# ~1000 minutes; Dagster backfills re-read days): compress after 30 days, keep 2 years.
COMPRESS_AFTER = "30 days"
RETENTION = "730 days"

TABLES = (
    "prices",
    "metrics",
    "anomalies",
    "headlines",
    "alert_enrichments",
    "batch_anomalies",
    "alert_episodes",
    "alert_events",
)

MIGRATIONS: list[tuple[int, str, list[str]]] = [
    (
        1,
        "core tables: prices, metrics, anomalies, headlines, alert_enrichments",
        [
            """
            CREATE TABLE IF NOT EXISTS prices (
                symbol        text             NOT NULL,
                ts            timestamptz      NOT NULL,
                price         double precision NOT NULL CHECK (price > 0),
                open          double precision,
                high          double precision,
                low           double precision,
                base_volume   double precision,
                quote_volume  double precision,
                source        text             NOT NULL DEFAULT 'ws',
                ingested_at   timestamptz      NOT NULL DEFAULT now(),
                PRIMARY KEY (symbol, ts)
            )
            """,
            """
            CREATE TABLE IF NOT EXISTS metrics (
                symbol      text             NOT NULL,
                ts          timestamptz      NOT NULL,
                window_s    integer          NOT NULL,
                ret         double precision,
                volatility  double precision,
                n           integer          NOT NULL,
                PRIMARY KEY (symbol, ts, window_s)
            )
            """,
            """
            CREATE TABLE IF NOT EXISTS anomalies (
                id            bigint GENERATED ALWAYS AS IDENTITY,
                symbol        text             NOT NULL,
                ts            timestamptz      NOT NULL,
                window_s      integer          NOT NULL,
                ret           double precision NOT NULL,
                direction     text             NOT NULL CHECK (direction IN ('up', 'down')),
                price         double precision NOT NULL,
                threshold     double precision NOT NULL,
                volatility    double precision,
                ref_price     double precision,
                ref_ts        timestamptz,
                created_at    timestamptz      NOT NULL DEFAULT now(),
                published_at  timestamptz,
                PRIMARY KEY (id),
                UNIQUE (symbol, ts, window_s)
            )
            """,
            "CREATE INDEX IF NOT EXISTS anomalies_ts_idx ON anomalies (ts)",
            """
            CREATE INDEX IF NOT EXISTS anomalies_unpublished_idx ON anomalies (id)
                WHERE published_at IS NULL
            """,
            """
            CREATE TABLE IF NOT EXISTS headlines (
                id          text             PRIMARY KEY,
                source      text             NOT NULL,
                title       text             NOT NULL,
                link        text,
                summary     text,
                published   timestamptz,
                sentiment   double precision,
                symbols     text[]           NOT NULL DEFAULT '{}',
                fetched_at  timestamptz      NOT NULL DEFAULT now()
            )
            """,
            "CREATE INDEX IF NOT EXISTS headlines_published_idx ON headlines (published)",
            "CREATE INDEX IF NOT EXISTS headlines_symbols_idx ON headlines USING gin (symbols)",
            """
            CREATE TABLE IF NOT EXISTS alert_enrichments (
                anomaly_id         bigint           NOT NULL REFERENCES anomalies (id) ON DELETE CASCADE,
                model              text             NOT NULL,
                summary            text             NOT NULL,
                is_template        boolean          NOT NULL DEFAULT false,
                prompt_tokens      integer          NOT NULL DEFAULT 0,
                completion_tokens  integer          NOT NULL DEFAULT 0,
                latency_ms         double precision,
                created_at         timestamptz      NOT NULL DEFAULT now(),
                PRIMARY KEY (anomaly_id, model)
            )
            """,
            """
            CREATE TABLE IF NOT EXISTS batch_anomalies (
                partition_key  text             NOT NULL,
                symbol         text             NOT NULL,
                ts             timestamptz      NOT NULL,
                window_s       integer          NOT NULL,
                ret            double precision NOT NULL,
                direction      text             NOT NULL,
                price          double precision NOT NULL,
                threshold      double precision NOT NULL,
                volatility     double precision,
                computed_at    timestamptz      NOT NULL DEFAULT now(),
                PRIMARY KEY (symbol, ts, window_s)
            )
            """,
            "CREATE INDEX IF NOT EXISTS batch_anomalies_partition_idx ON batch_anomalies (partition_key)",
        ],
    ),
    (
        2,
        "alert episodes: alert_episodes (one row per episode) and alert_events (the alerts outbox)",
        [
            """
            CREATE TABLE IF NOT EXISTS alert_episodes (
                episode_id      text             PRIMARY KEY,
                symbol          text             NOT NULL,
                opened_at       timestamptz      NOT NULL,
                closed_at       timestamptz,
                direction       text             NOT NULL CHECK (direction IN ('up', 'down')),
                ref_price       double precision NOT NULL,
                last_seq        integer          NOT NULL,
                peak_ret        double precision NOT NULL,
                peak_window_s   integer          NOT NULL,
                extreme_price   double precision NOT NULL,
                last_event_at   timestamptz      NOT NULL,
                summary         text             NOT NULL
            )
            """,
            "CREATE INDEX IF NOT EXISTS alert_episodes_open_idx ON alert_episodes (symbol) WHERE closed_at IS NULL",
            "CREATE INDEX IF NOT EXISTS alert_episodes_opened_idx ON alert_episodes (opened_at)",
            """
            CREATE TABLE IF NOT EXISTS alert_events (
                id              bigint GENERATED ALWAYS AS IDENTITY UNIQUE,
                episode_id      text             NOT NULL,
                seq             integer          NOT NULL,
                kind            text             NOT NULL CHECK (kind IN ('open', 'escalate', 'close')),
                symbol          text             NOT NULL,
                ts              timestamptz      NOT NULL,
                window_s        integer          NOT NULL,
                ret             double precision NOT NULL,
                direction       text             NOT NULL CHECK (direction IN ('up', 'down')),
                price           double precision NOT NULL,
                threshold       double precision NOT NULL,
                ref_price       double precision NOT NULL,
                ref_ts          timestamptz,
                peak_ret        double precision NOT NULL,
                peak_window_s   integer          NOT NULL,
                extreme_price   double precision NOT NULL,
                opened_at       timestamptz      NOT NULL,
                summary         text             NOT NULL,
                created_at      timestamptz      NOT NULL DEFAULT now(),
                published_at    timestamptz,
                PRIMARY KEY (episode_id, seq)
            )
            """,
            "CREATE INDEX IF NOT EXISTS alert_events_ts_idx ON alert_events (ts)",
            """
            CREATE INDEX IF NOT EXISTS alert_events_unpublished_idx ON alert_events (id)
                WHERE published_at IS NULL
            """,
        ],
    ),
]

SCHEMA_VERSION = MIGRATIONS[-1][0]

_TIMESCALE_SQL = [
    "SELECT create_hypertable('prices', by_range('ts', INTERVAL '1 day'), if_not_exists => TRUE, migrate_data => TRUE)",
    "SELECT create_hypertable('metrics', by_range('ts', INTERVAL '1 day'), if_not_exists => TRUE, migrate_data => TRUE)",
    """ALTER TABLE prices SET (timescaledb.compress, timescaledb.compress_segmentby = 'symbol',
           timescaledb.compress_orderby = 'ts')""",
    f"SELECT add_compression_policy('prices', compress_after => INTERVAL '{COMPRESS_AFTER}', if_not_exists => TRUE)",
    f"SELECT add_retention_policy('prices', drop_after => INTERVAL '{RETENTION}', if_not_exists => TRUE)",
    f"SELECT add_retention_policy('metrics', drop_after => INTERVAL '{RETENTION}', if_not_exists => TRUE)",
    """
    CREATE MATERIALIZED VIEW IF NOT EXISTS prices_1m WITH (timescaledb.continuous) AS
        SELECT symbol, time_bucket(INTERVAL '1 minute', ts) AS bucket,
               first(price, ts) AS open, max(price) AS high, min(price) AS low,
               last(price, ts) AS close, count(*) AS n
        FROM prices GROUP BY symbol, bucket WITH NO DATA
    """,
    """SELECT add_continuous_aggregate_policy('prices_1m', start_offset => INTERVAL '1 day',
           end_offset => INTERVAL '1 minute', schedule_interval => INTERVAL '1 minute', if_not_exists => TRUE)""",
]

_PORTABLE_SQL = [
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
]


@dataclass(frozen=True, slots=True)
class SchemaInfo:
    version: int
    timescale: bool
    applied: tuple[int, ...]  # migrations applied by this call


async def timescale_available(conn: asyncpg.Connection) -> bool:
    row = await conn.fetchval("SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'")
    return row is not None


async def apply_schema(pool: asyncpg.Pool) -> SchemaInfo:
    """Create / migrate the schema. Idempotent; concurrent callers serialize on an advisory lock."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", SCHEMA_LOCK_ID)
        await conn.execute(
            """
            CREATE TABLE IF NOT EXISTS schema_version (
                version      integer      PRIMARY KEY,
                description  text         NOT NULL,
                applied_at   timestamptz  NOT NULL DEFAULT now()
            )
            """
        )
        done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_version")}
        applied: list[int] = []
        for version, description, statements in MIGRATIONS:
            if version in done:
                continue
            for sql in statements:
                await conn.execute(sql)
            await conn.execute(
                "INSERT INTO schema_version (version, description) VALUES ($1, $2)", version, description
            )
            applied.append(version)
        timescale = await timescale_available(conn)
        if timescale:
            await conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
            for sql in _TIMESCALE_SQL:
                await conn.execute(sql)
        else:
            for sql in _PORTABLE_SQL:
                await conn.execute(sql)
    if timescale:
        log.info(
            "schema v%s ready: TimescaleDB ON (hypertables, compression after %s, retention %s, "
            "continuous aggregate prices_1m)",
            SCHEMA_VERSION,
            COMPRESS_AFTER,
            RETENTION,
        )
    else:
        log.info(
            "schema v%s ready: TimescaleDB extension not available -> Timescale features OFF "
            "(plain tables + (symbol, ts) indexes, portable date_bin view prices_1m)",
            SCHEMA_VERSION,
        )
    return SchemaInfo(version=SCHEMA_VERSION, timescale=timescale, applied=tuple(applied))


async def table_counts(pool: asyncpg.Pool, tables: Iterable[str] = TABLES) -> dict[str, int]:
    """Row counts of our tables (names come from the fixed `TABLES` allow-list)."""
    out: dict[str, int] = {}
    async with pool.acquire() as conn:
        for table in tables:
            if table not in TABLES:
                raise ValueError(f"unknown table {table!r}")
            sql = "SELECT count(*) FROM " + table  # noqa: S608 - table names come from the allow-list
            out[table] = int(await conn.fetchval(sql))
    return out
