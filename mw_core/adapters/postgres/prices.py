"""Repository of `prices` (ticks) and `metrics` (window statistics), and the processor's batch write.

Contract:
- Every write is idempotent through the natural key (`ON CONFLICT DO NOTHING` / `DO UPDATE`), so a
  replayed Kafka batch never duplicates rows.
- Bulk writes go through `unnest` of typed arrays (or COPY into a per-connection staging table for
  large tick batches): one round trip per table per batch. Timestamps travel as epoch-millisecond
  integers and are converted in SQL, which is exact.
- `store_batch` is the processor's hot path: a batch's ticks and latest metrics in two round
  trips (COPY, then one statement), raising `asyncpg.UniqueViolationError` when the batch was
  already stored (a replay after a crash); the caller then repeats the transaction with
  ``replay=True``. `write_batch` writes ticks, metrics and anomalies in one transaction
  (tools and tests).
- All SQL is static text with ``$n`` parameters; nothing is built from values.
"""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from mw_core.adapters.postgres.anomalies import insert_anomalies
from mw_core.adapters.postgres.unnest import columns, field_names
from mw_core.models import Anomaly, Tick

_TICK_FIELDS = field_names(Tick)  # the `prices` columns, one to one

# Per-connection staging table for COPY (created when the pool opens the connection): ticks are
# COPYed in (binary, no per-row SQL), then moved into `prices` in the same transaction. Column
# order = `Tick` fields.
_STAGE_PRICES = """
CREATE TEMP TABLE IF NOT EXISTS prices_stage (
    symbol text, t int8, price float8, open float8, high float8, low float8,
    base_volume float8, quote_volume float8, source text
) ON COMMIT DELETE ROWS
"""


async def prepare_connection(conn: asyncpg.Connection) -> None:
    """Per-connection setup run by `mw_core.adapters.postgres.pool.create_pool`: the staging table."""
    await conn.execute(_STAGE_PRICES)


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

MetricRow = tuple[str, int, int, float | None, float | None, int]  # symbol, ts ms, window, ret, vol, n

_MOVE_STAGED = """
INSERT INTO prices (symbol, ts, price, open, high, low, base_volume, quote_volume, source)
SELECT symbol, timestamptz 'epoch' + t * interval '1 millisecond', price, open, high, low,
       base_volume, quote_volume, source
FROM prices_stage
"""
_ON_CONFLICT_PRICES = "ON CONFLICT (symbol, ts) DO NOTHING"
# A plain INSERT is ~1.5x cheaper than ON CONFLICT's speculative insertion, and conflicts only
# happen when a batch is replayed after a crash: try it in a savepoint first. The three
# statements travel in one message (simple query protocol): one round trip.
_MOVE_IN_SAVEPOINT = "SAVEPOINT mw_move;" + _MOVE_STAGED + ";RELEASE SAVEPOINT mw_move"
_MOVE_AFTER_CONFLICT = "ROLLBACK TO SAVEPOINT mw_move;" + _MOVE_STAGED + _ON_CONFLICT_PRICES

# The processor's batch: the metrics upsert rides along with the move of the staged ticks in
# one statement (a data-modifying CTE runs even when nothing reads it).
_STORE_BATCH = "WITH metrics_upsert AS (" + _INSERT_METRICS + ")" + _MOVE_STAGED
_STORE_BATCH_REPLAY = _STORE_BATCH + _ON_CONFLICT_PRICES
_STORE_SMALL_BATCH = (
    "WITH metrics_upsert AS ("
    + _INSERT_METRICS
    + """)
INSERT INTO prices (symbol, ts, price, open, high, low, base_volume, quote_volume, source)
SELECT s, timestamptz 'epoch' + t * interval '1 millisecond', p, o, h, l, bv, qv, src
FROM unnest($7::text[], $8::int8[], $9::float8[], $10::float8[], $11::float8[], $12::float8[],
            $13::float8[], $14::float8[], $15::text[]) AS u(s, t, p, o, h, l, bv, qv, src)
ON CONFLICT (symbol, ts) DO NOTHING
"""
)
#: Below this many ticks one `unnest` statement beats COPY's extra round trip.
COPY_MIN_TICKS = 256


async def insert_ticks(conn: asyncpg.Connection, ticks: Sequence[Tick]) -> None:
    """Bulk insert, idempotent. Must run inside a transaction (the staging table empties on commit).

    Large batches go through COPY into the staging table; small ones through `unnest`.
    """
    if not ticks:
        return
    if len(ticks) >= COPY_MIN_TICKS:
        await conn.copy_records_to_table("prices_stage", records=ticks)
        try:
            await conn.execute(_MOVE_IN_SAVEPOINT)
        except asyncpg.UniqueViolationError:
            await conn.execute(_MOVE_AFTER_CONFLICT)
        return
    await conn.execute(_INSERT_PRICES, *columns(ticks, _TICK_FIELDS))


async def store_batch(
    conn: asyncpg.Connection, ticks: Sequence[Tick], metrics: Sequence[MetricRow], *, replay: bool = False
) -> None:
    """The processor's ticks and latest metrics, inside the caller's transaction, idempotent.

    Large batches: COPY into the staging table, then ONE statement (move + metrics upsert).
    Without `replay` the move is a plain INSERT and raises `asyncpg.UniqueViolationError` when
    the batch was stored before (a replay after a crash): the transaction is then aborted and
    the caller repeats it with ``replay=True`` (ON CONFLICT DO NOTHING). Small batches: one
    `unnest` statement with ON CONFLICT (no second attempt needed).
    """
    if not ticks:
        await insert_metrics(conn, metrics)
        return
    mcols = _metric_columns(metrics)
    if len(ticks) >= COPY_MIN_TICKS:
        await conn.copy_records_to_table("prices_stage", records=ticks)
        await conn.execute(_STORE_BATCH_REPLAY if replay else _STORE_BATCH, *mcols)
    else:
        await conn.execute(_STORE_SMALL_BATCH, *mcols, *columns(ticks, _TICK_FIELDS))


def _metric_columns(rows: Sequence[MetricRow]) -> list[list[object]]:
    """The six `metrics` columns of `rows` as lists (empty lists for no rows)."""
    return [list(c) for c in zip(*rows, strict=True)] if rows else [[] for _ in range(6)]


async def insert_metrics(conn: asyncpg.Connection, rows: Sequence[MetricRow]) -> None:
    if not rows:
        return
    await conn.execute(_INSERT_METRICS, *_metric_columns(rows))


async def write_batch(
    pool: asyncpg.Pool,
    ticks: Sequence[Tick],
    metrics: Sequence[MetricRow] = (),
    anomalies: Sequence[Anomaly] = (),
) -> None:
    """Write ticks, metrics and anomalies atomically (one transaction)."""
    async with pool.acquire() as conn, conn.transaction():
        await insert_ticks(conn, ticks)
        await insert_metrics(conn, metrics)
        await insert_anomalies(conn, anomalies)


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


_MINUTE_CLOSES = """
SELECT p.symbol,
       (extract(epoch FROM date_bin(interval '1 minute', p.ts, timestamptz 'epoch')) * 1000)::int8 AS m_ms,
       (array_agg(p.price ORDER BY p.ts DESC))[1] AS close
FROM unnest($1::text[], $2::int8[]) AS q(symbol, t)
JOIN prices p ON p.symbol = q.symbol
     AND p.ts >= timestamptz 'epoch' + (q.t - $3::int8 * 1000) * interval '1 millisecond'
     AND p.ts <  timestamptz 'epoch' + q.t * interval '1 millisecond'
GROUP BY p.symbol, m_ms
ORDER BY p.symbol, m_ms
"""


async def minute_closes(
    pool: asyncpg.Pool, before: dict[str, int], *, lookback_s: int
) -> dict[str, list[tuple[int, float]]]:
    """Per symbol -> time t, the 1-minute closes ``(minute start ms, close)`` in [t - lookback, t).

    Rebuilds the adaptive-scoring volatility baseline (`mw_core.markets.volatility`) after a restart.
    """
    if not before:
        return {}
    out: dict[str, list[tuple[int, float]]] = {}
    for r in await pool.fetch(_MINUTE_CLOSES, list(before), list(before.values()), lookback_s):
        out.setdefault(r["symbol"], []).append((int(r["m_ms"]), float(r["close"])))
    return out
