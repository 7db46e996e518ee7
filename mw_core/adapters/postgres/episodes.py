"""Repository of alert episodes: `alert_events` (the alerts outbox) and `alert_episodes`.

Contract:
- `insert_events` runs inside the processor's batch transaction. It is idempotent through the
  natural key ``(episode_id, seq)`` (``ON CONFLICT DO NOTHING``): a replayed batch re-emits the
  same deterministic events and stores nothing twice. It also upserts one `alert_episodes` row
  per episode (status, peak, extreme price, closing summary) for people and dashboards.
- The outbox: `unpublished_events` lists events not yet on the `alerts` topic, oldest first;
  `mark_events_published` stamps them once the send is acknowledged.
- `latest_alerts` lists the newest alerts (``open`` / ``escalate``), e.g. to chart them again.
- `detections_before` returns the raw detections (`anomalies`) from which the episode policy
  rebuilds a symbol's open episode as of a time (restart / rebalance), like the cooldown.
- All SQL is static text with ``$n`` parameters; times travel as epoch-millisecond ``int8``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import asyncpg

from mw_core.adapters.postgres.anomalies import anomaly_from_row, detection_fields, optional_ms
from mw_core.adapters.postgres.unnest import columns, field_names
from mw_core.markets.episodes import EpisodeEvent
from mw_core.models import Anomaly

_INSERT_EVENTS = """
INSERT INTO alert_events (episode_id, seq, kind, symbol, ts, window_s, ret, direction, price, threshold,
                          ref_price, ref_ts, peak_ret, peak_window_s, extreme_price, opened_at, summary)
SELECT e, q, k, s, timestamptz 'epoch' + t * interval '1 millisecond', w, r, d, p, th, rp,
       CASE WHEN rt IS NULL THEN NULL ELSE timestamptz 'epoch' + rt * interval '1 millisecond' END,
       pk, pw, x, timestamptz 'epoch' + o * interval '1 millisecond', sm
FROM unnest($1::text[], $2::int4[], $3::text[], $4::text[], $5::int8[], $6::int4[], $7::float8[],
            $8::text[], $9::float8[], $10::float8[], $11::float8[], $12::int8[], $13::float8[],
            $14::int4[], $15::float8[], $16::int8[], $17::text[])
     AS u(e, q, k, s, t, w, r, d, p, th, rp, rt, pk, pw, x, o, sm)
ON CONFLICT (episode_id, seq) DO NOTHING
"""

# One row per episode, newest event wins (events of one episode arrive in seq order).
_UPSERT_EPISODES = """
INSERT INTO alert_episodes (episode_id, symbol, opened_at, closed_at, direction, ref_price, last_seq,
                            peak_ret, peak_window_s, extreme_price, last_event_at, summary)
SELECT e, s, timestamptz 'epoch' + o * interval '1 millisecond',
       CASE WHEN k = 'close' THEN timestamptz 'epoch' + t * interval '1 millisecond' END,
       d, rp, q, pk, pw, x, timestamptz 'epoch' + t * interval '1 millisecond', sm
FROM unnest($1::text[], $2::text[], $3::int8[], $4::text[], $5::int8[], $6::text[], $7::float8[],
            $8::int4[], $9::float8[], $10::int4[], $11::float8[], $12::text[])
     AS u(e, s, o, k, t, d, rp, q, pk, pw, x, sm)
ON CONFLICT (episode_id) DO UPDATE
    SET closed_at = EXCLUDED.closed_at, last_seq = EXCLUDED.last_seq, peak_ret = EXCLUDED.peak_ret,
        peak_window_s = EXCLUDED.peak_window_s, extreme_price = EXCLUDED.extreme_price,
        last_event_at = EXCLUDED.last_event_at, summary = EXCLUDED.summary
    WHERE alert_episodes.last_seq <= EXCLUDED.last_seq
"""

_EVENT_FIELDS = field_names(EpisodeEvent)  # the `alert_events` columns of _INSERT_EVENTS, one to one
# The newest event's fields as _UPSERT_EPISODES's arrays. `direction` is only stored by the insert
# (the open): the opening move's.
_EPISODE_FIELDS = (
    "episode_id",
    "symbol",
    "opened_ts",
    "kind",
    "ts",
    "direction",
    "ref_price",
    "seq",
    "peak_ret",
    "peak_window_s",
    "extreme_price",
    "summary",
)

_EVENT_COLUMNS = """
SELECT id, episode_id, seq, kind, symbol, (extract(epoch FROM ts) * 1000)::int8 AS ts_ms, window_s, ret,
       direction, price, threshold, ref_price, (extract(epoch FROM ref_ts) * 1000)::int8 AS ref_ts_ms,
       peak_ret, peak_window_s, extreme_price, (extract(epoch FROM opened_at) * 1000)::int8 AS opened_ms,
       summary
FROM alert_events
"""

_UNPUBLISHED = (
    _EVENT_COLUMNS
    + """
WHERE published_at IS NULL AND ($2::text[] IS NULL OR symbol = ANY($2::text[]))
ORDER BY id
LIMIT $1
"""
)

_IN_RANGE = (
    _EVENT_COLUMNS
    + """
WHERE ts >= timestamptz 'epoch' + $1::int8 * interval '1 millisecond'
  AND ts <  timestamptz 'epoch' + $2::int8 * interval '1 millisecond'
ORDER BY ts, episode_id, seq
"""
)

_DETECTIONS_BEFORE = """
SELECT a.symbol, (extract(epoch FROM a.ts) * 1000)::int8 AS ts_ms, a.window_s, a.ret, a.direction, a.price,
       a.threshold, a.volatility, a.ref_price, (extract(epoch FROM a.ref_ts) * 1000)::int8 AS ref_ts_ms
FROM unnest($1::text[], $2::int8[]) AS q(symbol, t)
JOIN anomalies a ON a.symbol = q.symbol
     AND a.ts <  timestamptz 'epoch' + q.t * interval '1 millisecond'
     AND a.ts >= timestamptz 'epoch' + (q.t - $3::int8 * 1000) * interval '1 millisecond'
ORDER BY a.symbol, a.ts
"""

_EXTREMES = """
SELECT q.symbol, min(p.price) AS lo, max(p.price) AS hi
FROM unnest($1::text[], $2::int8[], $3::int8[]) AS q(symbol, t0, t1)
JOIN prices p ON p.symbol = q.symbol
     AND p.ts >= timestamptz 'epoch' + q.t0 * interval '1 millisecond'
     AND p.ts <  timestamptz 'epoch' + q.t1 * interval '1 millisecond'
GROUP BY q.symbol
"""


async def insert_events(conn: asyncpg.Connection, events: Sequence[EpisodeEvent]) -> None:
    """Store events (idempotent) and upsert their episodes, in the caller's transaction."""
    if not events:
        return
    await conn.execute(_INSERT_EVENTS, *columns(events, _EVENT_FIELDS))
    last: dict[str, EpisodeEvent] = {}
    for e in events:
        if e.episode_id not in last or e.seq > last[e.episode_id].seq:
            last[e.episode_id] = e
    await conn.execute(_UPSERT_EPISODES, *columns(list(last.values()), _EPISODE_FIELDS))


def event_from_row(row: asyncpg.Record | dict[str, Any]) -> EpisodeEvent:
    return EpisodeEvent(
        row["episode_id"],
        int(row["seq"]),
        row["kind"],
        *detection_fields(row),
        ref_price=float(row["ref_price"]),
        ref_ts=optional_ms(row["ref_ts_ms"]),
        peak_ret=float(row["peak_ret"]),
        peak_window_s=int(row["peak_window_s"]),
        extreme_price=float(row["extreme_price"]),
        opened_ts=int(row["opened_ms"]),
        summary=row["summary"],
    )


async def unpublished_events(
    pool: asyncpg.Pool, *, limit: int = 1000, symbols: Sequence[str] | None = None
) -> list[tuple[int, EpisodeEvent]]:
    """Events not yet on the alerts topic (the outbox), oldest first; optionally only `symbols`."""
    rows = await pool.fetch(_UNPUBLISHED, limit, list(symbols) if symbols is not None else None)
    return [(int(r["id"]), event_from_row(r)) for r in rows]


async def mark_events_published(pool: asyncpg.Pool, ids: Sequence[int]) -> None:
    if ids:
        await pool.execute(
            "UPDATE alert_events SET published_at = now() WHERE id = ANY($1::int8[])", list(ids)
        )


_PUBLISHED = (
    _EVENT_COLUMNS
    + """
WHERE published_at IS NOT NULL AND symbol = ANY($1::text[])
  AND ts >= timestamptz 'epoch' + $2::int8 * interval '1 millisecond'
  AND ts <  timestamptz 'epoch' + $3::int8 * interval '1 millisecond'
ORDER BY ts, symbol, seq
"""
)


async def published_events(
    pool: asyncpg.Pool, *, symbols: Sequence[str], start_ms: int, end_ms: int
) -> list[EpisodeEvent]:
    """Events of `symbols` in [start, end) that are on the alerts topic (published), in time order."""
    return [event_from_row(r) for r in await pool.fetch(_PUBLISHED, list(symbols), start_ms, end_ms)]


async def events_between(pool: asyncpg.Pool, *, start_ms: int, end_ms: int) -> list[EpisodeEvent]:
    """The stream's episode events in [start, end), in time order."""
    return [event_from_row(r) for r in await pool.fetch(_IN_RANGE, start_ms, end_ms)]


_LATEST_ALERTS = (
    _EVENT_COLUMNS
    + """
WHERE kind IN ('open', 'escalate')
ORDER BY ts DESC, episode_id, seq
LIMIT $1
"""
)


async def latest_alerts(pool: asyncpg.Pool, *, limit: int) -> list[EpisodeEvent]:
    """The newest `limit` alerts (``open`` / ``escalate`` events), newest first (`ts` index)."""
    return [event_from_row(r) for r in await pool.fetch(_LATEST_ALERTS, limit)]


async def detections_before(
    pool: asyncpg.Pool, before: dict[str, int], *, lookback_s: int
) -> dict[str, list[Anomaly]]:
    """Per symbol -> time, its raw detections in [t - lookback, t), ascending (episode rebuild)."""
    if not before:
        return {}
    out: dict[str, list[Anomaly]] = {}
    for r in await pool.fetch(_DETECTIONS_BEFORE, list(before), list(before.values()), lookback_s):
        out.setdefault(r["symbol"], []).append(anomaly_from_row(r))
    return out


async def price_extremes(
    pool: asyncpg.Pool, spans: dict[str, tuple[int, int]]
) -> dict[str, tuple[float, float]]:
    """Per symbol -> [t0, t1), the lowest and highest stored price (an episode's extreme price)."""
    if not spans:
        return {}
    rows = await pool.fetch(
        _EXTREMES, list(spans), [a for a, _ in spans.values()], [b for _, b in spans.values()]
    )
    return {r["symbol"]: (float(r["lo"]), float(r["hi"])) for r in rows if r["lo"] is not None}
