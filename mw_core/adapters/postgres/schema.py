"""PostgreSQL / TimescaleDB schema: versioned migrations, applied idempotently.

Contract:
- `apply_schema(pool)` is idempotent and safe to run concurrently (advisory lock); it records every
  applied migration in `schema_version`. Then the path-dependent steps of
  `mw_core.adapters.postgres.features` (TimescaleDB hypertables, compression, retention and a
  continuous aggregate when the extension is available; BRIN indexes and a portable `date_bin`
  view otherwise), each run once and recorded in `schema_features`. Which path was taken and
  which steps ran now are logged and returned.
- The tables' natural keys (primary keys / unique constraints) are what make the repositories'
  writes (`prices`, `anomalies`, `mw_core.news.store`, `mw_core.enrich.store`) idempotent.
- `table_counts` reads row counts of the fixed `TABLES` allow-list only.
- All SQL is static text.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

import asyncpg

from mw_core.adapters.postgres import features

log = logging.getLogger(__name__)

SCHEMA_LOCK_ID = 7_246_771_001  # pg_advisory_xact_lock key for migrations

TABLES = (
    "prices",
    "metrics",
    "anomalies",
    "headlines",
    "alert_enrichments",
    "batch_anomalies",
    "alert_episodes",
    "alert_events",
    "anomaly_enrichments",
    "notification_deliveries",
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
                direction       text             NOT NULL CHECK (direction IN ('up', 'down')),
                ret             double precision NOT NULL,
                threshold       double precision NOT NULL,
                price           double precision NOT NULL,
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
    (
        3,
        "alert_enrichments per alert (open / escalate episode event); old per-anomaly rows kept as "
        "anomaly_enrichments",
        [
            # Enrichment moved from raw detections to the alerts a person receives. The table name
            # stays with the Dagster asset that writes it; the per-anomaly rows of earlier versions
            # are kept (renamed, with their constraints) rather than dropped: they were paid for.
            "ALTER TABLE alert_enrichments RENAME TO anomaly_enrichments",
            "ALTER TABLE anomaly_enrichments RENAME CONSTRAINT alert_enrichments_pkey TO anomaly_enrichments_pkey",
            """
            ALTER TABLE anomaly_enrichments
                RENAME CONSTRAINT alert_enrichments_anomaly_id_fkey TO anomaly_enrichments_anomaly_id_fkey
            """,
            """
            CREATE TABLE IF NOT EXISTS alert_enrichments (
                episode_id         text             NOT NULL,
                seq                integer          NOT NULL,
                model              text             NOT NULL,
                summary            text             NOT NULL,
                prompt_tokens      integer          NOT NULL DEFAULT 0,
                completion_tokens  integer          NOT NULL DEFAULT 0,
                is_template        boolean          NOT NULL DEFAULT false,
                latency_ms         double precision,
                created_at         timestamptz      NOT NULL DEFAULT now(),
                PRIMARY KEY (episode_id, seq, model),
                FOREIGN KEY (episode_id, seq) REFERENCES alert_events (episode_id, seq) ON DELETE CASCADE
            )
            """,
        ],
    ),
    (
        4,
        "notification_deliveries: every delivery attempt of an alert to a channel (mw notify)",
        [
            # One row per attempt (delivered / failed / parked / dead) plus one `queued` row per
            # (event, channel) written before the alerts offset is committed: the notifier's
            # pending state. See mw_core.adapters.postgres.notifications.
            """
            CREATE TABLE IF NOT EXISTS notification_deliveries (
                id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                channel          text             NOT NULL,
                channel_name     text             NOT NULL,
                event_key        text             NOT NULL,
                idempotency_key  text             NOT NULL,
                status           text             NOT NULL
                    CHECK (status IN ('queued', 'delivered', 'failed', 'parked', 'dead')),
                attempt          integer          NOT NULL DEFAULT 0,
                http_status      integer,
                latency_ms       double precision,
                error            text,
                payload          bytea,
                created_at       timestamptz      NOT NULL DEFAULT now()
            )
            """,
            # At most one pending state and one final state per (event, channel).
            """
            CREATE UNIQUE INDEX IF NOT EXISTS notification_deliveries_queued_key
                ON notification_deliveries (idempotency_key) WHERE status = 'queued'
            """,
            """
            CREATE UNIQUE INDEX IF NOT EXISTS notification_deliveries_final_key
                ON notification_deliveries (idempotency_key) WHERE status IN ('delivered', 'dead')
            """,
            "CREATE INDEX IF NOT EXISTS notification_deliveries_key_idx ON notification_deliveries (idempotency_key)",
            "CREATE INDEX IF NOT EXISTS notification_deliveries_channel_idx ON notification_deliveries (channel, created_at)",
        ],
    ),
]

SCHEMA_VERSION = MIGRATIONS[-1][0]


@dataclass(frozen=True, slots=True)
class SchemaInfo:
    version: int
    timescale: bool
    applied: tuple[int, ...]  # migrations applied by this call
    features_applied: tuple[str, ...] = ()  # path-dependent steps applied by this call ("timescale:2")


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
        timescale = await features.timescale_available(conn)
        features_applied = await features.apply_transactional_steps(conn, timescale)
    # CALL refresh_continuous_aggregate refuses a transaction block: after the commit.
    features_applied += await features.apply_after_commit_steps(pool, timescale)
    if timescale:
        log.info(
            "schema v%s ready: TimescaleDB ON (hypertables, compression after %s, retention %s, "
            "continuous aggregate prices_1m); steps applied now: %s",
            SCHEMA_VERSION,
            features.COMPRESS_AFTER,
            features.RETENTION,
            features_applied or "none",
        )
    else:
        log.info(
            "schema v%s ready: TimescaleDB extension not available -> Timescale features OFF "
            "(plain tables + (symbol, ts) indexes, portable date_bin view prices_1m); steps applied now: %s",
            SCHEMA_VERSION,
            features_applied or "none",
        )
    return SchemaInfo(
        version=SCHEMA_VERSION,
        timescale=timescale,
        applied=tuple(applied),
        features_applied=tuple(features_applied),
    )


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
