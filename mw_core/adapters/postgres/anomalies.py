"""Repository of the stream's `anomalies` table, which is also the alert outbox.

Contract:
- `insert_anomalies` is idempotent through the natural key ``(symbol, ts, window_s)``
  (``ON CONFLICT DO NOTHING``), so a replayed batch never duplicates an alert.
- The outbox: `unpublished_anomalies` lists rows whose alert is not published yet, oldest first;
  `mark_published` stamps them once the alert is on the bus.
- `last_anomaly_ts` gives the cooldown state per symbol (stream restarts and batch partitions).
- `anomaly_columns` / `anomaly_from_row` are the one mapping between `Anomaly` and SQL columns
  (the batch's `batch_anomalies` writes and the enrichment reads use them too).
- All SQL is static text with ``$n`` parameters; times travel as epoch-millisecond ``int8``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import asyncpg

from mw_core.models import Anomaly

_INSERT_ANOMALIES = """
INSERT INTO anomalies (symbol, ts, window_s, ret, direction, price, threshold, volatility, ref_price, ref_ts)
SELECT s, timestamptz 'epoch' + t * interval '1 millisecond', w, r, d, p, th, v, rp,
       CASE WHEN rt IS NULL THEN NULL ELSE timestamptz 'epoch' + rt * interval '1 millisecond' END
FROM unnest($1::text[], $2::int8[], $3::int4[], $4::float8[], $5::text[], $6::float8[],
            $7::float8[], $8::float8[], $9::float8[], $10::int8[])
     AS u(s, t, w, r, d, p, th, v, rp, rt)
ON CONFLICT (symbol, ts, window_s) DO NOTHING
"""


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
