"""Repository of `notification_deliveries`: the notifier's pending state and attempt log.

Contract:
- `enqueue` writes one ``queued`` row per (event, channel) with the record's payload, BEFORE the
  notifier commits the `alerts` offset; it returns the idempotency keys it newly queued (a
  replayed record conflicts on the partial unique index and is not queued twice).
- `record` appends one attempt: ``delivered`` / ``failed`` / ``parked`` (a failure that left the
  channel's circuit open) / ``dead`` (attempts exhausted or rejected; sent to the DLQ). At most
  one final row (delivered or dead) exists per key; a second one is ignored.
- `pending(channels)` lists queued deliveries with no final row, oldest first, with the attempts
  already made: what a (re)started notifier still owes, in order.
- `final_keys(keys)`: which deliveries are final (`mw replay` waits for its events' keys).
- `delivery_counts` feeds `mw status` and the Dagster delivery-health view: per channel,
  delivered / failed / parked / dead / pending counts and p95 latency of delivered attempts.
- All SQL is static text with ``$n`` parameters.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg

FINAL = ("delivered", "dead")


@dataclass(frozen=True, slots=True)
class NewDelivery:
    """A (event, channel) pair to queue."""

    channel: str
    channel_name: str
    event_key: str
    idempotency_key: str
    payload: bytes


@dataclass(frozen=True, slots=True)
class PendingDelivery:
    """A queued delivery without a final state."""

    id: int
    channel: str
    event_key: str
    idempotency_key: str
    payload: bytes
    attempts: int


@dataclass(frozen=True, slots=True)
class Attempt:
    """One delivery attempt, as recorded."""

    channel: str
    channel_name: str
    event_key: str
    idempotency_key: str
    status: str  # delivered / failed / parked / dead
    attempt: int
    http_status: int | None = None
    latency_ms: float | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class ChannelCounts:
    channel: str
    channel_name: str
    delivered: int
    failed: int
    parked: int
    dead: int
    pending: int
    p95_latency_ms: float | None
    last_status: str | None = None  # the channel's latest attempt: delivered / failed / parked / dead


_ENQUEUE = """
INSERT INTO notification_deliveries (channel, channel_name, event_key, idempotency_key, status, payload)
SELECT c, n, e, k, 'queued', p
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bytea[]) AS u(c, n, e, k, p)
ON CONFLICT (idempotency_key) WHERE status = 'queued' DO NOTHING
RETURNING idempotency_key
"""

_RECORD = """
INSERT INTO notification_deliveries
    (channel, channel_name, event_key, idempotency_key, status, attempt, http_status, latency_ms, error)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
ON CONFLICT (idempotency_key) WHERE status IN ('delivered', 'dead') DO NOTHING
"""

_PENDING = """
SELECT q.id, q.channel, q.event_key, q.idempotency_key, q.payload,
       (SELECT count(*) FROM notification_deliveries a
         WHERE a.idempotency_key = q.idempotency_key AND a.status <> 'queued') AS attempts
FROM notification_deliveries q
WHERE q.status = 'queued' AND q.channel = ANY($1::text[])
  AND NOT EXISTS (SELECT 1 FROM notification_deliveries f
                  WHERE f.idempotency_key = q.idempotency_key AND f.status IN ('delivered', 'dead'))
ORDER BY q.id
"""

_KNOWN = """
SELECT DISTINCT idempotency_key FROM notification_deliveries
WHERE status = 'queued' AND idempotency_key = ANY($1::text[])
"""

# The parked count is the backlog of channels whose latest attempt left them parked.
_COUNTS = """
WITH last_attempt AS (
    SELECT DISTINCT ON (channel) channel, status
    FROM notification_deliveries WHERE status <> 'queued'
    ORDER BY channel, id DESC
), open_keys AS (
    SELECT q.channel, count(*) AS n
    FROM notification_deliveries q
    WHERE q.status = 'queued'
      AND NOT EXISTS (SELECT 1 FROM notification_deliveries f
                      WHERE f.idempotency_key = q.idempotency_key AND f.status IN ('delivered', 'dead'))
    GROUP BY q.channel
)
SELECT d.channel, max(d.channel_name) AS channel_name,
       count(*) FILTER (WHERE d.status = 'delivered') AS delivered,
       count(*) FILTER (WHERE d.status IN ('failed', 'parked')) AS failed,
       count(*) FILTER (WHERE d.status = 'dead') AS dead,
       coalesce(max(o.n), 0) AS pending,
       CASE WHEN max(l.status) = 'parked' THEN coalesce(max(o.n), 0) ELSE 0 END AS parked,
       max(l.status) AS last_status,
       percentile_cont(0.95) WITHIN GROUP (ORDER BY d.latency_ms)
           FILTER (WHERE d.status = 'delivered') AS p95
FROM notification_deliveries d
LEFT JOIN open_keys o ON o.channel = d.channel
LEFT JOIN last_attempt l ON l.channel = d.channel
GROUP BY d.channel
ORDER BY d.channel
"""


async def enqueue(pool: asyncpg.Pool, rows: Sequence[NewDelivery]) -> set[str]:
    """Queue deliveries; return the idempotency keys that were not queued before."""
    if not rows:
        return set()
    records = await pool.fetch(
        _ENQUEUE,
        [r.channel for r in rows],
        [r.channel_name for r in rows],
        [r.event_key for r in rows],
        [r.idempotency_key for r in rows],
        [r.payload for r in rows],
    )
    return {str(r["idempotency_key"]) for r in records}


async def record(pool: asyncpg.Pool, a: Attempt) -> None:
    """Append one attempt (a second final row for the same key is ignored)."""
    await pool.execute(
        _RECORD,
        a.channel,
        a.channel_name,
        a.event_key,
        a.idempotency_key,
        a.status,
        a.attempt,
        a.http_status,
        a.latency_ms,
        (a.error or "")[:500] or None,
    )


async def pending(pool: asyncpg.Pool, channels: Sequence[str]) -> list[PendingDelivery]:
    """Queued deliveries of `channels` without a final state, oldest first."""
    rows = await pool.fetch(_PENDING, list(channels))
    return [
        PendingDelivery(
            id=int(r["id"]),
            channel=str(r["channel"]),
            event_key=str(r["event_key"]),
            idempotency_key=str(r["idempotency_key"]),
            payload=bytes(r["payload"] or b""),
            attempts=int(r["attempts"]),
        )
        for r in rows
    ]


async def queued_keys(pool: asyncpg.Pool, keys: Sequence[str]) -> set[str]:
    """Which of `keys` were ever queued (a follow-up goes only where its alert went)."""
    if not keys:
        return set()
    return {str(r["idempotency_key"]) for r in await pool.fetch(_KNOWN, list(keys))}


async def final_keys(pool: asyncpg.Pool, keys: Sequence[str]) -> set[str]:
    """Which of `keys` reached a final state (delivered or dead)."""
    if not keys:
        return set()
    sql = """
    SELECT DISTINCT idempotency_key FROM notification_deliveries
    WHERE status IN ('delivered', 'dead') AND idempotency_key = ANY($1::text[])
    """
    return {str(r["idempotency_key"]) for r in await pool.fetch(sql, list(keys))}


async def delivery_counts(pool: asyncpg.Pool) -> list[ChannelCounts]:
    """Per-channel counts and p95 latency (ms) of delivered attempts."""
    return [
        ChannelCounts(
            channel=str(r["channel"]),
            channel_name=str(r["channel_name"]),
            delivered=int(r["delivered"]),
            failed=int(r["failed"]),
            parked=int(r["parked"]),
            dead=int(r["dead"]),
            pending=int(r["pending"]),
            p95_latency_ms=None if r["p95"] is None else float(r["p95"]),
            last_status=r["last_status"],
        )
        for r in await pool.fetch(_COUNTS)
    ]


async def unfinished(pool: asyncpg.Pool) -> int:
    """How many queued deliveries (all channels) have no final state yet."""
    sql = """
    SELECT count(*) FROM notification_deliveries q
    WHERE q.status = 'queued'
      AND NOT EXISTS (SELECT 1 FROM notification_deliveries f
                      WHERE f.idempotency_key = q.idempotency_key AND f.status IN ('delivered', 'dead'))
    """
    return int(await pool.fetchval(sql))
