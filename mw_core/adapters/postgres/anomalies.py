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

from mw_core.adapters.postgres.unnest import columns, field_names
from mw_core.models import Anomaly, Direction

_ANOMALY_FIELDS = field_names(Anomaly)

_INSERT_ANOMALIES = """
INSERT INTO anomalies (symbol, ts, window_s, ret, direction, price, threshold, volatility, ref_price, ref_ts)
SELECT s, timestamptz 'epoch' + t * interval '1 millisecond', w, r, d, p, th, v, rp,
       CASE WHEN rt IS NULL THEN NULL ELSE timestamptz 'epoch' + rt * interval '1 millisecond' END
FROM unnest($1::text[], $2::int8[], $3::int4[], $4::float8[], $5::text[], $6::float8[],
            $7::float8[], $8::float8[], $9::float8[], $10::int8[])
     AS u(s, t, w, r, d, p, th, v, rp, rt)
ON CONFLICT (symbol, ts, window_s) DO NOTHING
"""


def anomaly_columns(anomalies: Sequence[Anomaly]) -> list[list[Any]]:
    """Column arrays for `unnest` inserts, in `Anomaly` field order (symbol ... ref_ts)."""
    return columns(anomalies, _ANOMALY_FIELDS)


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


def optional_ms(value: Any) -> int | None:
    """An epoch-ms column that may be NULL."""
    return int(value) if value is not None else None


def detection_fields(
    row: asyncpg.Record | dict[str, Any],
) -> tuple[str, int, int, float, Direction, float, float]:
    """``(symbol, ts, window_s, ret, direction, price, threshold)`` of a detection row (``ts_ms``)."""
    return (
        row["symbol"],
        int(row["ts_ms"]),
        int(row["window_s"]),
        float(row["ret"]),
        row["direction"],
        float(row["price"]),
        float(row["threshold"]),
    )


def anomaly_from_row(row: asyncpg.Record | dict[str, Any]) -> Anomaly:
    ref_ts = optional_ms(row["ref_ts_ms"])
    return Anomaly(*detection_fields(row), row["volatility"], row["ref_price"], ref_ts)


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
