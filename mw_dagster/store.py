"""PostgreSQL queries of the batch side: partition reads, batch-anomaly writes, check statistics.

Contract:
- Plain asyncpg coroutines over a pool from `mw_core.db.create_pool`; no dagster import, so the
  module can move into `mw_core` unchanged. `PostgresResource` runs them under ``asyncio.run``.
- All SQL is static text with ``$n`` parameters. Times travel as epoch-millisecond ``int8`` and are
  converted in SQL (``timestamptz 'epoch' + ms * interval '1 millisecond'``), which is exact.
- Reads are set-based: one query per question (e.g. every symbol's ticks of a partition, already
  grouped and ordered, in one round trip). Writes of a partition are one transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg

from mw_core import db
from mw_core.models import Anomaly

# --- records ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SymbolSeries:
    """One symbol's ticks of a partition: `warmup` (before the partition) and `ticks` (inside)."""

    symbol: str
    warmup: list[tuple[int, float]]
    ticks: list[tuple[int, float]]
    minutes_covered: int  # distinct 1-minute buckets with at least one tick inside the partition


@dataclass(frozen=True, slots=True)
class PartitionPrices:
    start_ms: int
    end_ms: int
    series: list[SymbolSeries]  # ordered by symbol
    rows_scanned: int  # warmup + partition rows read


@dataclass(frozen=True, slots=True)
class Agreement:
    """Stream (`anomalies`) vs batch (`batch_anomalies`) for one time range, by natural key."""

    both: int
    batch_only: int
    stream_only: int

    @property
    def batch_total(self) -> int:
        return self.both + self.batch_only

    @property
    def stream_total(self) -> int:
        return self.both + self.stream_only

    @property
    def ratio(self) -> float:
        """Jaccard agreement of the two key sets; 1.0 when both are empty."""
        union = self.both + self.batch_only + self.stream_only
        return 1.0 if union == 0 else self.both / union


@dataclass(frozen=True, slots=True)
class SymbolCoverage:
    """Ticks of one symbol in a lookback window ending at `now`."""

    symbol: str
    ticks: int
    minutes_covered: int
    newest_ts: int | None  # epoch ms of the newest tick (any time), None if never seen


@dataclass(frozen=True, slots=True)
class PriceDuplicates:
    """Re-sent frames in a window: ticks whose price+OHLC+volume equal the symbol's previous tick."""

    ticks: int
    repeats: int

    @property
    def rate(self) -> float:
        return 0.0 if self.ticks == 0 else self.repeats / self.ticks


@dataclass(frozen=True, slots=True)
class HeadlineStats:
    total: int
    newest_published: int | None  # epoch ms
    newest_fetched: int | None  # epoch ms
    window_rows: int  # rows fetched in the lookback window
    window_distinct_titles: int

    @property
    def duplicate_rate(self) -> float:
        """Share of rows in the window whose normalized title another row already has."""
        if self.window_rows == 0:
            return 0.0
        return 1.0 - self.window_distinct_titles / self.window_rows


@dataclass(frozen=True, slots=True)
class PriceFlow:
    """What the UI needs to see prices flowing: ticks in the last `window_s` and the newest tick."""

    window_s: int
    ticks: int
    symbols: int
    newest_ts: int | None
    anomalies_last_hour: int


# --- SQL -------------------------------------------------------------------------------------------

# Every symbol's ticks in [start - warmup, end), grouped per symbol and ordered by ts, plus the number
# of covered minutes inside the partition (date_bin buckets). One round trip, arrays decode fast.
_PARTITION_PRICES = """
WITH bounds AS (
    SELECT timestamptz 'epoch' + $1::int8 * interval '1 millisecond' AS p_start,
           timestamptz 'epoch' + $2::int8 * interval '1 millisecond' AS p_end,
           timestamptz 'epoch' + ($1::int8 - $3::int8 * 1000) * interval '1 millisecond' AS w_start
)
SELECT p.symbol,
       array_agg((extract(epoch FROM p.ts) * 1000)::int8 ORDER BY p.ts) AS ts_ms,
       array_agg(p.price ORDER BY p.ts) AS prices,
       count(*) FILTER (WHERE p.ts < b.p_start) AS n_warmup,
       count(DISTINCT date_bin(interval '1 minute', p.ts, timestamptz 'epoch'))
           FILTER (WHERE p.ts >= b.p_start) AS minutes
FROM prices p CROSS JOIN bounds b
WHERE p.ts >= b.w_start AND p.ts < b.p_end
GROUP BY p.symbol
ORDER BY p.symbol
"""

# Cooldown seed from earlier batch partitions, for symbols the stream never alerted on (backfills).
_LAST_BATCH_ANOMALY = """
SELECT q.symbol, (extract(epoch FROM max(a.ts)) * 1000)::int8 AS ts_ms
FROM unnest($1::text[]) AS q(symbol)
JOIN batch_anomalies a ON a.symbol = q.symbol
     AND a.ts < timestamptz 'epoch' + $2::int8 * interval '1 millisecond'
     AND a.ts >= timestamptz 'epoch' + ($2::int8 - $3::int8 * 1000) * interval '1 millisecond'
GROUP BY q.symbol
"""

_DELETE_BATCH = """
DELETE FROM batch_anomalies
WHERE partition_key = $1
   OR (ts >= timestamptz 'epoch' + $2::int8 * interval '1 millisecond'
       AND ts < timestamptz 'epoch' + $3::int8 * interval '1 millisecond')
"""

_INSERT_BATCH = """
INSERT INTO batch_anomalies (partition_key, symbol, ts, window_s, ret, direction, price, threshold, volatility)
SELECT $1, s, timestamptz 'epoch' + t * interval '1 millisecond', w, r, d, p, th, v
FROM unnest($2::text[], $3::int8[], $4::int4[], $5::float8[], $6::text[], $7::float8[], $8::float8[],
            $9::float8[]) AS u(s, t, w, r, d, p, th, v)
ON CONFLICT (symbol, ts, window_s) DO UPDATE
    SET partition_key = EXCLUDED.partition_key, ret = EXCLUDED.ret, direction = EXCLUDED.direction,
        price = EXCLUDED.price, threshold = EXCLUDED.threshold, volatility = EXCLUDED.volatility,
        computed_at = now()
"""

_AGREEMENT = """
WITH b AS (
    SELECT symbol, ts, window_s FROM batch_anomalies
    WHERE ts >= timestamptz 'epoch' + $1::int8 * interval '1 millisecond'
      AND ts <  timestamptz 'epoch' + $2::int8 * interval '1 millisecond'
), s AS (
    SELECT symbol, ts, window_s FROM anomalies
    WHERE ts >= timestamptz 'epoch' + $1::int8 * interval '1 millisecond'
      AND ts <  timestamptz 'epoch' + $2::int8 * interval '1 millisecond'
)
SELECT count(*) FILTER (WHERE b.symbol IS NOT NULL AND s.symbol IS NOT NULL) AS both_,
       count(*) FILTER (WHERE s.symbol IS NULL) AS batch_only,
       count(*) FILTER (WHERE b.symbol IS NULL) AS stream_only
FROM b FULL OUTER JOIN s ON b.symbol = s.symbol AND b.ts = s.ts AND b.window_s = s.window_s
"""

# Per symbol over [now - lookback, now]: ticks and covered minutes; plus the newest tick ever, so a
# symbol that went silent more than `lookback` ago still shows up (with zero ticks).
_COVERAGE = """
WITH w AS (
    SELECT symbol, count(*) AS ticks,
           count(DISTINCT date_bin(interval '1 minute', ts, timestamptz 'epoch')) AS minutes
    FROM prices
    WHERE ts >  timestamptz 'epoch' + ($1::int8 - $2::int8 * 1000) * interval '1 millisecond'
      AND ts <= timestamptz 'epoch' + $1::int8 * interval '1 millisecond'
    GROUP BY symbol
), wanted AS (
    SELECT DISTINCT symbol FROM (SELECT unnest($3::text[]) AS symbol UNION ALL SELECT symbol FROM w) x
)
SELECT q.symbol, coalesce(w.ticks, 0) AS ticks, coalesce(w.minutes, 0) AS minutes,
       (SELECT (extract(epoch FROM max(p.ts)) * 1000)::int8 FROM prices p WHERE p.symbol = q.symbol) AS newest
FROM wanted q LEFT JOIN w USING (symbol)
ORDER BY q.symbol
"""

_PRICE_REPEATS = """
SELECT count(*) AS ticks,
       count(*) FILTER (WHERE price = prev_price AND open IS NOT DISTINCT FROM prev_open
                        AND high IS NOT DISTINCT FROM prev_high AND low IS NOT DISTINCT FROM prev_low
                        AND base_volume IS NOT NULL AND base_volume = prev_volume) AS repeats
FROM (
    SELECT price, open, high, low, base_volume,
           lag(price) OVER w AS prev_price, lag(open) OVER w AS prev_open, lag(high) OVER w AS prev_high,
           lag(low) OVER w AS prev_low, lag(base_volume) OVER w AS prev_volume
    FROM prices
    WHERE ts >  timestamptz 'epoch' + ($1::int8 - $2::int8 * 1000) * interval '1 millisecond'
      AND ts <= timestamptz 'epoch' + $1::int8 * interval '1 millisecond'
    WINDOW w AS (PARTITION BY symbol ORDER BY ts)
) t
"""

_HEADLINE_STATS = """
SELECT (SELECT count(*) FROM headlines) AS total,
       (SELECT (extract(epoch FROM max(published)) * 1000)::int8 FROM headlines) AS newest_published,
       (SELECT (extract(epoch FROM max(fetched_at)) * 1000)::int8 FROM headlines) AS newest_fetched,
       count(*) AS window_rows,
       count(DISTINCT lower(regexp_replace(btrim(title), '\\s+', ' ', 'g'))) AS window_titles
FROM headlines
WHERE fetched_at > timestamptz 'epoch' + ($1::int8 - $2::int8 * 1000) * interval '1 millisecond'
"""

_NEW_ANOMALIES = """
SELECT id, symbol, (extract(epoch FROM ts) * 1000)::int8 AS ts_ms, window_s, ret, direction, price,
       threshold, volatility, ref_price, (extract(epoch FROM ref_ts) * 1000)::int8 AS ref_ts_ms
FROM anomalies WHERE id > $1 ORDER BY id LIMIT $2
"""

_PRICE_FLOW = """
SELECT count(*) FILTER (WHERE ts > timestamptz 'epoch' + ($1::int8 - $2::int8 * 1000) * interval '1 millisecond')
           AS ticks,
       count(DISTINCT symbol) FILTER (
           WHERE ts > timestamptz 'epoch' + ($1::int8 - $2::int8 * 1000) * interval '1 millisecond') AS symbols,
       (SELECT (extract(epoch FROM max(p.ts)) * 1000)::int8 FROM prices p) AS newest,
       (SELECT count(*) FROM anomalies
        WHERE ts > timestamptz 'epoch' + ($1::int8 - 3600000) * interval '1 millisecond') AS anomalies_1h
FROM prices
WHERE ts > timestamptz 'epoch' + ($1::int8 - greatest($2::int8, 3600) * 1000) * interval '1 millisecond'
"""

# --- queries -------------------------------------------------------------------------------------


async def load_partition(pool: asyncpg.Pool, *, start_ms: int, end_ms: int, warmup_s: int) -> PartitionPrices:
    """All ticks of [start, end) plus the `warmup_s` seconds before, per symbol, in one query."""
    rows = await pool.fetch(_PARTITION_PRICES, start_ms, end_ms, warmup_s)
    series: list[SymbolSeries] = []
    scanned = 0
    for r in rows:
        pairs = list(zip(r["ts_ms"], r["prices"], strict=True))
        n_warmup = int(r["n_warmup"])
        scanned += len(pairs)
        series.append(SymbolSeries(r["symbol"], pairs[:n_warmup], pairs[n_warmup:], int(r["minutes"])))
    return PartitionPrices(start_ms=start_ms, end_ms=end_ms, series=series, rows_scanned=scanned)


async def cooldown_seeds(
    pool: asyncpg.Pool, symbols: Sequence[str], *, start_ms: int, cooldown_s: int
) -> dict[str, int]:
    """Each symbol's last alert before `start_ms`, the way the stream seeds its detector.

    The stream reads its own `anomalies` table (`mw_core.db.last_anomaly_ts`); a symbol the stream
    never alerted on (a day loaded by backfill, processor down) falls back to the batch results of
    the previous partition within one cooldown, so partition boundaries behave like one long run.
    """
    if not symbols:
        return {}
    seeds = await db.last_anomaly_ts(pool, dict.fromkeys(symbols, start_ms))
    missing = [s for s in symbols if s not in seeds]
    if missing and cooldown_s > 0:
        rows = await pool.fetch(_LAST_BATCH_ANOMALY, missing, start_ms, cooldown_s)
        seeds.update({r["symbol"]: int(r["ts_ms"]) for r in rows if r["ts_ms"] is not None})
    return seeds


async def replace_batch_anomalies(
    pool: asyncpg.Pool, *, partition_key: str, start_ms: int, end_ms: int, anomalies: Sequence[Anomaly]
) -> int:
    """Replace the partition's rows of `batch_anomalies` atomically (delete + bulk insert)."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(_DELETE_BATCH, partition_key, start_ms, end_ms)
        if anomalies:
            await conn.execute(
                _INSERT_BATCH,
                partition_key,
                [a.symbol for a in anomalies],
                [a.ts for a in anomalies],
                [a.window_s for a in anomalies],
                [a.ret for a in anomalies],
                [a.direction for a in anomalies],
                [a.price for a in anomalies],
                [a.threshold for a in anomalies],
                [a.volatility for a in anomalies],
            )
    return len(anomalies)


async def agreement(pool: asyncpg.Pool, *, start_ms: int, end_ms: int) -> Agreement:
    row = await pool.fetchrow(_AGREEMENT, start_ms, end_ms)
    if row is None:  # an aggregate always returns one row
        raise RuntimeError("aggregate query returned no row")
    return Agreement(
        both=int(row["both_"]), batch_only=int(row["batch_only"]), stream_only=int(row["stream_only"])
    )


async def coverage(
    pool: asyncpg.Pool, *, now_ms: int, lookback_s: int, symbols: Sequence[str]
) -> list[SymbolCoverage]:
    rows = await pool.fetch(_COVERAGE, now_ms, lookback_s, list(symbols))
    return [
        SymbolCoverage(
            r["symbol"], int(r["ticks"]), int(r["minutes"]), None if r["newest"] is None else int(r["newest"])
        )
        for r in rows
    ]


async def price_repeats(pool: asyncpg.Pool, *, now_ms: int, lookback_s: int) -> PriceDuplicates:
    row = await pool.fetchrow(_PRICE_REPEATS, now_ms, lookback_s)
    if row is None:  # an aggregate always returns one row
        raise RuntimeError("aggregate query returned no row")
    return PriceDuplicates(ticks=int(row["ticks"]), repeats=int(row["repeats"]))


async def headline_stats(pool: asyncpg.Pool, *, now_ms: int, lookback_s: int) -> HeadlineStats:
    row = await pool.fetchrow(_HEADLINE_STATS, now_ms, lookback_s)
    if row is None:  # an aggregate always returns one row
        raise RuntimeError("aggregate query returned no row")
    return HeadlineStats(
        total=int(row["total"]),
        newest_published=None if row["newest_published"] is None else int(row["newest_published"]),
        newest_fetched=None if row["newest_fetched"] is None else int(row["newest_fetched"]),
        window_rows=int(row["window_rows"]),
        window_distinct_titles=int(row["window_titles"]),
    )


async def anomalies_after(pool: asyncpg.Pool, *, after_id: int, limit: int) -> list[tuple[int, Anomaly]]:
    """Stream anomalies with ``id > after_id``, oldest first (the sensor's cursor walk)."""
    rows = await pool.fetch(_NEW_ANOMALIES, after_id, limit)
    return [(int(r["id"]), db.anomaly_from_row(r)) for r in rows]


async def existing_headline_ids(pool: asyncpg.Pool, ids: Sequence[str]) -> set[str]:
    """Which of `ids` are already stored in `headlines`."""
    if not ids:
        return set()
    rows = await pool.fetch("SELECT id FROM headlines WHERE id = ANY($1::text[])", list(ids))
    return {r["id"] for r in rows}


async def price_flow(pool: asyncpg.Pool, *, now_ms: int, window_s: int = 60) -> PriceFlow:
    row = await pool.fetchrow(_PRICE_FLOW, now_ms, window_s)
    if row is None:  # an aggregate always returns one row
        raise RuntimeError("aggregate query returned no row")
    return PriceFlow(
        window_s=window_s,
        ticks=int(row["ticks"]),
        symbols=int(row["symbols"]),
        newest_ts=None if row["newest"] is None else int(row["newest"]),
        anomalies_last_hour=int(row["anomalies_1h"]),
    )
