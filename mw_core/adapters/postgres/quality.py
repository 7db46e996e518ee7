"""Data-quality and health questions to PostgreSQL: the numbers behind the Dagster asset checks.

Contract:
- No dagster import (see CONTRIBUTING.md). Each function answers one question in one set-based query and
  returns a frozen record; verdicts (thresholds, severities) are the caller's.
- "Now" is a parameter (``now_ms``, epoch ms), never read here, so results are reproducible.
- All SQL is static text with ``$n`` parameters; times travel as epoch-millisecond ``int8``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg

# --- records ---------------------------------------------------------------------------------------


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


def _opt_int(value: int | None) -> int | None:
    return None if value is None else int(value)


async def _one_row(pool: asyncpg.Pool, sql: str, *args: object) -> asyncpg.Record:
    row = await pool.fetchrow(sql, *args)
    if row is None:  # an aggregate always returns one row
        raise RuntimeError("aggregate query returned no row")
    return row


# --- queries -------------------------------------------------------------------------------------


async def coverage(
    pool: asyncpg.Pool, *, now_ms: int, lookback_s: int, symbols: Sequence[str]
) -> list[SymbolCoverage]:
    """Per symbol (the watched ones plus any with ticks): ticks and covered minutes in the window."""
    rows = await pool.fetch(_COVERAGE, now_ms, lookback_s, list(symbols))
    return [
        SymbolCoverage(r["symbol"], int(r["ticks"]), int(r["minutes"]), _opt_int(r["newest"])) for r in rows
    ]


async def price_repeats(pool: asyncpg.Pool, *, now_ms: int, lookback_s: int) -> PriceDuplicates:
    """Ticks in the window and how many of them repeat their symbol's previous frame exactly."""
    row = await _one_row(pool, _PRICE_REPEATS, now_ms, lookback_s)
    return PriceDuplicates(ticks=int(row["ticks"]), repeats=int(row["repeats"]))


async def headline_stats(pool: asyncpg.Pool, *, now_ms: int, lookback_s: int) -> HeadlineStats:
    """Headline totals, newest times, and the window's rows vs distinct normalized titles."""
    row = await _one_row(pool, _HEADLINE_STATS, now_ms, lookback_s)
    return HeadlineStats(
        total=int(row["total"]),
        newest_published=_opt_int(row["newest_published"]),
        newest_fetched=_opt_int(row["newest_fetched"]),
        window_rows=int(row["window_rows"]),
        window_distinct_titles=int(row["window_titles"]),
    )


async def price_flow(pool: asyncpg.Pool, *, now_ms: int, window_s: int = 60) -> PriceFlow:
    """Ticks and symbols in the last `window_s`, the newest tick, and the last hour's anomalies."""
    row = await _one_row(pool, _PRICE_FLOW, now_ms, window_s)
    return PriceFlow(
        window_s=window_s,
        ticks=int(row["ticks"]),
        symbols=int(row["symbols"]),
        newest_ts=_opt_int(row["newest"]),
        anomalies_last_hour=int(row["anomalies_1h"]),
    )
