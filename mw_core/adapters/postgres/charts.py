"""Set-based reads for charts and the market overview: price windows, headlines, overview numbers.

Contract:
- `price_windows(pool, spans, bucket_s=...)` reads the prices of MANY (symbol, t0, t1) spans in
  ONE query (``unnest ... WITH ORDINALITY`` joined to `prices` on its (symbol, ts) key, so only
  the rows in the spans are touched). With ``bucket_s > 0`` each span is downsampled in SQL to the
  last tick of each `date_bin` bucket (e.g. one point per minute for a day): the database never
  ships a whole day of raw ticks to draw 800 pixels. `auto_bucket_s` picks the bucket for a span.
- `headlines_between` returns headlines tagged with any of the symbols, published (or fetched,
  when the feed had no date) in [t0, t1), oldest first, capped.
- `overview_rows` computes, per watched symbol and as of ``now``, in ONE query: last price, 1 h
  and 24 h change (against the first price of each period), realized volatility (sample std of
  1-minute log returns over 24 h, returns across a missing minute skipped), alerts today (open +
  escalate events since 00:00 UTC) and the episode open at ``now``. `market_metrics` gives the
  market-wide numbers (alerts in the last hour, ticks/s over the last 5 min, open episodes).
- `newest_tick_ms` is the time of the newest tick of the watched symbols (a replayed day's end).
- Episode events come from `mw_core.adapters.postgres.episodes.events_between` (not repeated here).
- All SQL is static text with ``$n`` parameters; times travel as epoch-millisecond ``int8``.
"""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg

from mw_core.charts.model import HeadlineMark, MarketMetrics, OverviewRow, Point

DAY_MS = 86_400_000
# Spans up to this long are read raw; longer ones one point per bucket (at least one minute).
RAW_SPAN_MS = 3 * 3_600_000
MAX_POINTS = 1_500

_RAW = """
SELECT q.i, (extract(epoch FROM p.ts) * 1000)::int8 AS ts_ms, p.price
FROM unnest($1::text[], $2::int8[], $3::int8[]) WITH ORDINALITY AS q(symbol, t0, t1, i)
JOIN prices p ON p.symbol = q.symbol
     AND p.ts >= timestamptz 'epoch' + q.t0 * interval '1 millisecond'
     AND p.ts <  timestamptz 'epoch' + q.t1 * interval '1 millisecond'
ORDER BY q.i, p.ts
"""

# The last tick of each bucket, stamped with its own time (a real price at a real instant).
_BINNED = """
SELECT DISTINCT ON (q.i, date_bin($4::int8 * interval '1 second', p.ts, timestamptz 'epoch'))
       q.i, (extract(epoch FROM p.ts) * 1000)::int8 AS ts_ms, p.price
FROM unnest($1::text[], $2::int8[], $3::int8[]) WITH ORDINALITY AS q(symbol, t0, t1, i)
JOIN prices p ON p.symbol = q.symbol
     AND p.ts >= timestamptz 'epoch' + q.t0 * interval '1 millisecond'
     AND p.ts <  timestamptz 'epoch' + q.t1 * interval '1 millisecond'
ORDER BY q.i, date_bin($4::int8 * interval '1 second', p.ts, timestamptz 'epoch'), p.ts DESC
"""

_HEADLINES = """
SELECT (extract(epoch FROM coalesce(published, fetched_at)) * 1000)::int8 AS ts_ms, title,
       coalesce(sentiment, 0) AS sentiment, symbols
FROM headlines
WHERE symbols && $1::text[]
  AND coalesce(published, fetched_at) >= timestamptz 'epoch' + $2::int8 * interval '1 millisecond'
  AND coalesce(published, fetched_at) <  timestamptz 'epoch' + $3::int8 * interval '1 millisecond'
ORDER BY coalesce(published, fetched_at), id
LIMIT $4
"""

_OVERVIEW = """
WITH t AS (SELECT timestamptz 'epoch' + $2::int8 * interval '1 millisecond' AS now,
                  timestamptz 'epoch' + $3::int8 * interval '1 millisecond' AS day_start)
SELECT q.symbol, l.price AS last_price, (extract(epoch FROM l.ts) * 1000)::int8 AS last_ms,
       h1.price AS price_1h, h24.price AS price_24h, v.vol, coalesce(a.n, 0) AS alerts_today,
       e.episode_id AS open_episode
FROM unnest($1::text[]) AS q(symbol)
CROSS JOIN t
LEFT JOIN LATERAL (SELECT price, ts FROM prices
                   WHERE symbol = q.symbol AND ts <= t.now ORDER BY ts DESC LIMIT 1) l ON true
LEFT JOIN LATERAL (SELECT price FROM prices
                   WHERE symbol = q.symbol AND ts >= t.now - interval '1 hour' AND ts <= t.now
                   ORDER BY ts LIMIT 1) h1 ON true
LEFT JOIN LATERAL (SELECT price FROM prices
                   WHERE symbol = q.symbol AND ts >= t.now - interval '24 hours' AND ts <= t.now
                   ORDER BY ts LIMIT 1) h24 ON true
LEFT JOIN LATERAL (
    SELECT stddev_samp(r) AS vol FROM (
        SELECT CASE WHEN b - lag(b) OVER w = interval '1 minute'
                    THEN ln(price / lag(price) OVER w) END AS r
        FROM (SELECT DISTINCT ON (date_bin(interval '1 minute', ts, timestamptz 'epoch'))
                     date_bin(interval '1 minute', ts, timestamptz 'epoch') AS b, price
              FROM prices
              WHERE symbol = q.symbol AND ts > t.now - interval '24 hours' AND ts <= t.now
              ORDER BY date_bin(interval '1 minute', ts, timestamptz 'epoch'), ts DESC) m
        WINDOW w AS (ORDER BY b)) r) v ON true
LEFT JOIN LATERAL (SELECT count(*) AS n FROM alert_events
                   WHERE symbol = q.symbol AND kind IN ('open', 'escalate')
                     AND ts >= t.day_start AND ts <= t.now) a ON true
LEFT JOIN LATERAL (SELECT episode_id FROM alert_episodes
                   WHERE symbol = q.symbol AND opened_at <= t.now
                     AND (closed_at IS NULL OR closed_at > t.now)
                   ORDER BY opened_at DESC LIMIT 1) e ON true
ORDER BY q.symbol
"""

_METRICS = """
WITH t AS (SELECT timestamptz 'epoch' + $2::int8 * interval '1 millisecond' AS now)
SELECT
    (SELECT count(*) FROM alert_events, t
     WHERE symbol = ANY($1::text[]) AND kind IN ('open', 'escalate')
       AND ts > t.now - interval '1 hour' AND ts <= t.now) AS alerts_1h,
    (SELECT count(*) FROM prices, t
     WHERE symbol = ANY($1::text[]) AND ts > t.now - interval '5 minutes' AND ts <= t.now) AS ticks_5m,
    (SELECT count(*) FROM alert_episodes, t
     WHERE symbol = ANY($1::text[]) AND opened_at <= t.now
       AND (closed_at IS NULL OR closed_at > t.now)) AS open_episodes
"""


# One index probe per symbol (newest first on the (symbol, ts) key), not a scan of `prices`.
_NEWEST_TICK = """
SELECT max(n.ts_ms) AS newest_ms
FROM unnest($1::text[]) AS q(symbol)
CROSS JOIN LATERAL (SELECT (extract(epoch FROM ts) * 1000)::int8 AS ts_ms FROM prices
                    WHERE symbol = q.symbol ORDER BY ts DESC LIMIT 1) n
"""


def auto_bucket_s(span_ms: int, *, max_points: int = MAX_POINTS) -> int:
    """0 (raw) for spans up to 3 h, else a whole number of minutes giving <= `max_points` points."""
    if span_ms <= RAW_SPAN_MS:
        return 0
    minutes = -(-span_ms // (max_points * 60_000))
    return max(1, minutes) * 60


async def price_windows(
    pool: asyncpg.Pool | asyncpg.Connection,
    spans: Sequence[tuple[str, int, int]],
    *,
    bucket_s: int = 0,
) -> list[list[Point]]:
    """Prices of each (symbol, t0, t1) span, ascending, in one query; aligned with `spans`.

    Args:
        pool: Pool or connection on a database with the Market Watch schema.
        spans: (symbol, t0 ms, t1 ms) half-open spans; they may overlap or repeat.
        bucket_s: 0 for every tick, else the last tick of each `bucket_s`-second bucket.
    """
    if not spans:
        return []
    args = ([s for s, _, _ in spans], [a for _, a, _ in spans], [b for _, _, b in spans])
    rows = await (pool.fetch(_BINNED, *args, bucket_s) if bucket_s > 0 else pool.fetch(_RAW, *args))
    out: list[list[Point]] = [[] for _ in spans]
    for r in rows:
        out[int(r["i"]) - 1].append((int(r["ts_ms"]), float(r["price"])))
    return out


async def price_series(
    pool: asyncpg.Pool | asyncpg.Connection,
    symbols: Sequence[str],
    start_ms: int,
    end_ms: int,
    *,
    bucket_s: int | None = None,
) -> dict[str, list[Point]]:
    """Symbol -> prices in [start, end), one query; `bucket_s` None picks `auto_bucket_s`."""
    bucket = auto_bucket_s(end_ms - start_ms) if bucket_s is None else bucket_s
    windows = await price_windows(pool, [(s, start_ms, end_ms) for s in symbols], bucket_s=bucket)
    return dict(zip(symbols, windows, strict=True))


async def headlines_between(
    pool: asyncpg.Pool | asyncpg.Connection,
    symbols: Sequence[str],
    start_ms: int,
    end_ms: int,
    *,
    limit: int = 200,
) -> list[HeadlineMark]:
    """Headlines tagged with any of `symbols` in [start, end), oldest first (see module contract)."""
    if not symbols:
        return []
    rows = await pool.fetch(_HEADLINES, list(symbols), start_ms, end_ms, limit)
    return [
        HeadlineMark(
            ts=int(r["ts_ms"]), title=r["title"], sentiment=float(r["sentiment"]), symbols=tuple(r["symbols"])
        )
        for r in rows
    ]


def _change(last: float | None, first: float | None) -> float | None:
    return last / first - 1 if last is not None and first else None


async def overview_rows(
    pool: asyncpg.Pool | asyncpg.Connection, symbols: Sequence[str], now_ms: int
) -> list[OverviewRow]:
    """One row per symbol as of `now_ms`, sorted by symbol (see module contract)."""
    if not symbols:
        return []
    day_start = now_ms - now_ms % DAY_MS
    rows = await pool.fetch(_OVERVIEW, list(symbols), now_ms, day_start)
    return [
        OverviewRow(
            symbol=r["symbol"],
            last_price=r["last_price"],
            last_ts=r["last_ms"],
            change_1h=_change(r["last_price"], r["price_1h"]),
            change_24h=_change(r["last_price"], r["price_24h"]),
            volatility_24h=float(r["vol"]) if r["vol"] is not None else None,
            alerts_today=int(r["alerts_today"]),
            open_episode=r["open_episode"],
        )
        for r in rows
    ]


async def market_metrics(
    pool: asyncpg.Pool | asyncpg.Connection, symbols: Sequence[str], now_ms: int
) -> MarketMetrics:
    """Alerts in the last hour, ticks per second over the last 5 min, episodes open at `now_ms`."""
    r = await pool.fetchrow(_METRICS, list(symbols), now_ms)
    assert r is not None  # a SELECT without FROM always returns one row
    return MarketMetrics(
        alerts_per_hour=int(r["alerts_1h"]),
        tick_rate=round(int(r["ticks_5m"]) / 300.0, 4),
        open_episodes=int(r["open_episodes"]),
    )


async def newest_tick_ms(pool: asyncpg.Pool | asyncpg.Connection, symbols: Sequence[str]) -> int | None:
    """Time of the newest stored tick of any of `symbols` (None: no tick at all)."""
    if not symbols:
        return None
    value = await pool.fetchval(_NEWEST_TICK, list(symbols))
    return int(value) if value is not None else None
