"""PostgreSQL / TimescaleDB adapter: versioned schema and a repository over an asyncpg pool.

Contract:
- `apply_schema(pool)` is idempotent and safe to run concurrently (advisory lock); it records every
  applied migration in `schema_version`. With the `timescaledb` extension available it turns the
  time-series tables into hypertables with compression and retention policies and a continuous
  aggregate; without it, plain tables + (symbol, ts) indexes and a portable `date_bin` view. Which
  path was taken is logged and returned.
- Every write is idempotent through a natural key (`ON CONFLICT DO NOTHING` / `DO UPDATE`), so a
  replayed Kafka batch never duplicates rows.
- Bulk writes go through `unnest` of typed arrays: one round trip per table per batch. Timestamps
  travel as epoch-millisecond integers and are converted in SQL, which is exact.
- All SQL is static text with ``$n`` parameters; nothing is built from values.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from mw_core.models import Anomaly, Tick

log = logging.getLogger(__name__)

SCHEMA_LOCK_ID = 7_246_771_001  # pg_advisory_xact_lock key for migrations
# Compression must not touch chunks a backfill may still write into (REST backfill covers at most
# ~1000 minutes; Dagster backfills re-read days): compress after 30 days, keep 2 years.
COMPRESS_AFTER = "30 days"
RETENTION = "730 days"

TABLES = ("prices", "metrics", "anomalies", "headlines", "alert_enrichments", "batch_anomalies")

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


# Per-connection staging table for COPY: ticks are COPYed in (binary, no per-row SQL), then moved
# into `prices` with ON CONFLICT DO NOTHING in the same transaction. Column order = `Tick` fields.
_STAGE_PRICES = """
CREATE TEMP TABLE IF NOT EXISTS prices_stage (
    symbol text, t int8, price float8, open float8, high float8, low float8,
    base_volume float8, quote_volume float8, source text
) ON COMMIT DELETE ROWS
"""


async def _init_connection(conn: asyncpg.Connection) -> None:
    await conn.execute(_STAGE_PRICES)


async def create_pool(url: str, *, min_size: int = 1, max_size: int = 8) -> asyncpg.Pool:
    """An asyncpg pool. The URL may carry a password; it is never logged."""
    pool = await asyncpg.create_pool(
        url, min_size=min_size, max_size=max_size, command_timeout=60, init=_init_connection
    )
    assert pool is not None
    return pool


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


# --- writes ---------------------------------------------------------------------------------------

_INSERT_PRICES = """
INSERT INTO prices (symbol, ts, price, open, high, low, base_volume, quote_volume, source)
SELECT s, timestamptz 'epoch' + t * interval '1 millisecond', p, o, h, l, bv, qv, src
FROM unnest($1::text[], $2::int8[], $3::float8[], $4::float8[], $5::float8[], $6::float8[],
            $7::float8[], $8::float8[], $9::text[]) AS u(s, t, p, o, h, l, bv, qv, src)
ON CONFLICT (symbol, ts) DO NOTHING
"""

_INSERT_METRICS = """
INSERT INTO metrics (symbol, ts, window_s, ret, volatility, n)
SELECT s, timestamptz 'epoch' + t * interval '1 millisecond', w, r, v, n
FROM unnest($1::text[], $2::int8[], $3::int4[], $4::float8[], $5::float8[], $6::int4[])
     AS u(s, t, w, r, v, n)
ON CONFLICT (symbol, ts, window_s) DO UPDATE
    SET ret = EXCLUDED.ret, volatility = EXCLUDED.volatility, n = EXCLUDED.n
"""

_INSERT_ANOMALIES = """
INSERT INTO anomalies (symbol, ts, window_s, ret, direction, price, threshold, volatility, ref_price, ref_ts)
SELECT s, timestamptz 'epoch' + t * interval '1 millisecond', w, r, d, p, th, v, rp,
       CASE WHEN rt IS NULL THEN NULL ELSE timestamptz 'epoch' + rt * interval '1 millisecond' END
FROM unnest($1::text[], $2::int8[], $3::int4[], $4::float8[], $5::text[], $6::float8[],
            $7::float8[], $8::float8[], $9::float8[], $10::int8[])
     AS u(s, t, w, r, d, p, th, v, rp, rt)
ON CONFLICT (symbol, ts, window_s) DO NOTHING
"""

MetricRow = tuple[str, int, int, float | None, float | None, int]  # symbol, ts ms, window, ret, vol, n


_MOVE_STAGED = """
INSERT INTO prices (symbol, ts, price, open, high, low, base_volume, quote_volume, source)
SELECT symbol, timestamptz 'epoch' + t * interval '1 millisecond', price, open, high, low,
       base_volume, quote_volume, source
FROM prices_stage
"""
_MOVE_STAGED_PRICES = _MOVE_STAGED + "ON CONFLICT (symbol, ts) DO NOTHING"


async def insert_ticks(conn: asyncpg.Connection, ticks: Sequence[Tick]) -> None:
    """Bulk insert, idempotent. Must run inside a transaction (the staging table empties on commit).

    Large batches go through COPY into the staging table; small ones through `unnest`.
    """
    if not ticks:
        return
    if len(ticks) >= 256:
        await conn.execute(_STAGE_PRICES)  # no-op on pooled connections (created at connect)
        await conn.copy_records_to_table("prices_stage", records=ticks)
        # A plain INSERT is ~1.5x faster than ON CONFLICT's speculative insertion, and conflicts
        # only happen when a batch is replayed after a crash: try it in a savepoint first.
        try:
            async with conn.transaction():
                await conn.execute(_MOVE_STAGED)
        except asyncpg.UniqueViolationError:
            await conn.execute(_MOVE_STAGED_PRICES)
        return
    await conn.execute(
        _INSERT_PRICES,
        [t.symbol for t in ticks],
        [t.ts for t in ticks],
        [t.price for t in ticks],
        [t.open for t in ticks],
        [t.high for t in ticks],
        [t.low for t in ticks],
        [t.base_volume for t in ticks],
        [t.quote_volume for t in ticks],
        [t.source for t in ticks],
    )


async def insert_metrics(conn: asyncpg.Connection, rows: Sequence[MetricRow]) -> None:
    if not rows:
        return
    cols = list(zip(*rows, strict=True))
    await conn.execute(_INSERT_METRICS, *cols)


def anomaly_columns(anomalies: Sequence[Anomaly]) -> tuple[list[Any], ...]:
    """Column arrays for `unnest` inserts, in `Anomaly` field order (symbol ... ref_ts)."""
    return (
        [a.symbol for a in anomalies],
        [a.ts for a in anomalies],
        [a.window_s for a in anomalies],
        [a.ret for a in anomalies],
        [a.direction for a in anomalies],
        [a.price for a in anomalies],
        [a.threshold for a in anomalies],
        [a.volatility for a in anomalies],
        [a.ref_price for a in anomalies],
        [a.ref_ts for a in anomalies],
    )


async def insert_anomalies(conn: asyncpg.Connection, anomalies: Sequence[Anomaly]) -> None:
    if not anomalies:
        return
    await conn.execute(_INSERT_ANOMALIES, *anomaly_columns(anomalies))


async def write_batch(
    pool: asyncpg.Pool,
    ticks: Sequence[Tick],
    metrics: Sequence[MetricRow] = (),
    anomalies: Sequence[Anomaly] = (),
) -> None:
    """Write one processor batch atomically (one transaction, one round trip per table)."""
    async with pool.acquire() as conn, conn.transaction():
        await insert_ticks(conn, ticks)
        await insert_metrics(conn, metrics)
        await insert_anomalies(conn, anomalies)


# --- reads ----------------------------------------------------------------------------------------

_UNPUBLISHED = """
SELECT id, symbol, (extract(epoch FROM ts) * 1000)::int8 AS ts_ms, window_s, ret, direction, price,
       threshold, volatility, ref_price, (extract(epoch FROM ref_ts) * 1000)::int8 AS ref_ts_ms
FROM anomalies
WHERE published_at IS NULL AND ($2::text[] IS NULL OR symbol = ANY($2::text[]))
ORDER BY id
LIMIT $1
"""


def anomaly_from_row(row: asyncpg.Record | dict[str, Any]) -> Anomaly:
    return Anomaly(
        symbol=row["symbol"],
        ts=int(row["ts_ms"]),
        window_s=int(row["window_s"]),
        ret=float(row["ret"]),
        direction=row["direction"],
        price=float(row["price"]),
        threshold=float(row["threshold"]),
        volatility=row["volatility"],
        ref_price=row["ref_price"],
        ref_ts=int(row["ref_ts_ms"]) if row["ref_ts_ms"] is not None else None,
    )


async def unpublished_anomalies(
    pool: asyncpg.Pool, *, limit: int = 1000, symbols: Sequence[str] | None = None
) -> list[tuple[int, Anomaly]]:
    """Anomalies whose alert has not been published yet (the alert outbox), oldest first.

    With `symbols`, only those symbols' rows: a processor publishes only for the partitions it owns.
    """
    rows = await pool.fetch(_UNPUBLISHED, limit, list(symbols) if symbols is not None else None)
    return [(int(r["id"]), anomaly_from_row(r)) for r in rows]


async def mark_published(pool: asyncpg.Pool, ids: Sequence[int]) -> None:
    if ids:
        await pool.execute("UPDATE anomalies SET published_at = now() WHERE id = ANY($1::int8[])", list(ids))


async def recent_prices(
    pool: asyncpg.Pool, before: dict[str, int], *, lookback_s: int
) -> dict[str, list[tuple[int, float]]]:
    """For each symbol -> first-unseen tick time (ms), the stored ticks in [t - lookback, t).

    Used to rehydrate windows after a restart or a partition rebalance: one query for all symbols.
    """
    if not before:
        return {}
    rows = await pool.fetch(
        """
        SELECT p.symbol, (extract(epoch FROM p.ts) * 1000)::int8 AS ts_ms, p.price
        FROM unnest($1::text[], $2::int8[]) AS q(symbol, t)
        JOIN prices p ON p.symbol = q.symbol
             AND p.ts >= timestamptz 'epoch' + (q.t - $3::int8 * 1000) * interval '1 millisecond'
             AND p.ts <  timestamptz 'epoch' + q.t * interval '1 millisecond'
        ORDER BY p.symbol, p.ts
        """,
        list(before.keys()),
        list(before.values()),
        lookback_s,
    )
    out: dict[str, list[tuple[int, float]]] = {s: [] for s in before}
    for r in rows:
        out[r["symbol"]].append((int(r["ts_ms"]), float(r["price"])))
    return out


async def last_anomaly_ts(pool: asyncpg.Pool, before: dict[str, int]) -> dict[str, int]:
    """For each symbol, the newest stored anomaly strictly before the given time (cooldown state)."""
    if not before:
        return {}
    rows = await pool.fetch(
        """
        SELECT q.symbol, (extract(epoch FROM max(a.ts)) * 1000)::int8 AS ts_ms
        FROM unnest($1::text[], $2::int8[]) AS q(symbol, t)
        JOIN anomalies a ON a.symbol = q.symbol
             AND a.ts < timestamptz 'epoch' + q.t * interval '1 millisecond'
        GROUP BY q.symbol
        """,
        list(before.keys()),
        list(before.values()),
    )
    return {r["symbol"]: int(r["ts_ms"]) for r in rows if r["ts_ms"] is not None}


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


async def ping(pool_or_url: asyncpg.Pool | str) -> int:
    """`SELECT 1` health check."""
    if isinstance(pool_or_url, str):
        conn = await asyncpg.connect(pool_or_url, timeout=5)
        try:
            return int(await conn.fetchval("SELECT 1"))
        finally:
            await conn.close()
    return int(await pool_or_url.fetchval("SELECT 1"))
