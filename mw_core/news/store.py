"""Headline persistence (asyncpg) and publishing to the `news` topic (any aiokafka-like producer).

Contract:
- `insert_headlines` is idempotent: ``ON CONFLICT (id) DO NOTHING RETURNING id`` reports only
  the ids that were new, so re-running a poll (or the Dagster asset) never duplicates rows and
  tells the caller exactly what to publish. Rows travel as typed arrays through one ``unnest``
  per chunk; the ragged ``symbols`` arrays are passed flattened with per-row bounds and sliced
  back in SQL, so no delimiter can break them.
- Reads return `Headline` records with aware UTC datetimes. Headlines without a ``published``
  date are placed at their ``fetched_at`` time.
- `publish_headlines` sends key = id, value = `encode_headline` JSON and waits for every ack.
- All SQL is static text with ``$n`` parameters.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Sequence
from datetime import UTC
from typing import Any, Protocol

import asyncpg

from mw_core.adapters.postgres.unnest import columns
from mw_core.news.parse import Headline, encode_headline

INSERT_CHUNK = 5000

_INSERT_SQL = """
INSERT INTO headlines (id, source, title, link, summary, published, sentiment, symbols)
SELECT u.id, u.source, u.title, u.link, u.summary, u.published, u.sentiment, ($8::text[])[u.lo:u.hi]
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::timestamptz[],
            $7::float8[], $9::int4[], $10::int4[])
     AS u(id, source, title, link, summary, published, sentiment, lo, hi)
ON CONFLICT (id) DO NOTHING
RETURNING id
"""

_NEAR_SQL = """
WITH t AS (SELECT timestamptz 'epoch' + $2::int8 * interval '1 millisecond' AS at)
SELECT h.id, h.source, h.title, h.link, h.summary, h.published, h.sentiment, h.symbols
FROM headlines h, t
WHERE h.symbols @> ARRAY[$1::text]
  AND coalesce(h.published, h.fetched_at) BETWEEN t.at - $3::int8 * interval '1 second'
                                              AND t.at + $3::int8 * interval '1 second'
ORDER BY abs(extract(epoch FROM coalesce(h.published, h.fetched_at) - t.at)), h.id
LIMIT $4
"""

_NEWEST_SQL = """
SELECT id, source, title, link, summary, published, sentiment, symbols
FROM headlines
WHERE $2::text IS NULL OR symbols @> ARRAY[$2::text]
ORDER BY coalesce(published, fetched_at) DESC, id
LIMIT $1
"""


class HeadlineProducer(Protocol):
    """The part of `aiokafka.AIOKafkaProducer` we use: ``send`` returns a delivery future."""

    async def send(
        self, topic: str, value: bytes | None = None, key: bytes | None = None
    ) -> Awaitable[Any]: ...


def headline_from_row(row: asyncpg.Record | dict[str, Any]) -> Headline:
    published = row["published"]
    return Headline(
        id=row["id"],
        source=row["source"],
        title=row["title"],
        link=row["link"],
        summary=row["summary"] or "",
        published=published.astimezone(UTC) if published is not None else None,
        sentiment=float(row["sentiment"]) if row["sentiment"] is not None else 0.0,
        symbols=tuple(row["symbols"] or ()),
    )


async def insert_headlines(
    pool: asyncpg.Pool | asyncpg.Connection, items: Sequence[Headline], *, chunk_size: int = INSERT_CHUNK
) -> list[str]:
    """Insert headlines, skipping ids already stored; return the ids that were new, in input order.

    Args:
        pool: Pool (or connection) on a database with the Market Watch schema.
        items: Headlines to store; duplicates within `items` keep the first occurrence.
        chunk_size: Rows per statement (one round trip each).

    Returns:
        Ids inserted by this call (empty when everything was already stored).
    """
    unique = list({h.id: h for h in reversed(items)}.values())[::-1]  # first occurrence wins
    inserted: set[str] = set()
    for start in range(0, len(unique), max(1, chunk_size)):
        chunk = unique[start : start + max(1, chunk_size)]
        flat: list[str] = []
        lo: list[int] = []
        hi: list[int] = []
        for h in chunk:
            lo.append(len(flat) + 1)  # 1-based inclusive bounds; lo > hi slices to '{}'
            flat.extend(h.symbols)
            hi.append(len(flat))
        text = columns(chunk, ("id", "source", "title", "link"))
        summaries = [h.summary or None for h in chunk]
        scored = columns(chunk, ("published", "sentiment"))
        rows = await pool.fetch(_INSERT_SQL, *text, summaries, *scored, flat, lo, hi)
        inserted.update(r["id"] for r in rows)
    return [h.id for h in unique if h.id in inserted]


async def headlines_near(
    pool: asyncpg.Pool | asyncpg.Connection,
    symbol: str,
    ts_ms: int,
    window_s: int = 1800,
    *,
    limit: int = 20,
) -> list[Headline]:
    """Headlines tagged with `symbol` within ±`window_s` of `ts_ms` (epoch ms), closest first.

    Used to give an LLM the news context of an anomaly.
    """
    rows = await pool.fetch(_NEAR_SQL, symbol, ts_ms, window_s, limit)
    return [headline_from_row(r) for r in rows]


async def newest_headlines(
    pool: asyncpg.Pool | asyncpg.Connection, limit: int = 20, *, symbol: str | None = None
) -> list[Headline]:
    """The `limit` most recent headlines (optionally only those tagged with `symbol`), newest first."""
    rows = await pool.fetch(_NEWEST_SQL, limit, symbol)
    return [headline_from_row(r) for r in rows]


async def publish_headlines(producer: HeadlineProducer, topic: str, items: Sequence[Headline]) -> int:
    """Send each headline to `topic` (key = id) and wait until all are acknowledged.

    Returns:
        The number of records sent.
    """
    deliveries = []
    for h in items:
        key, value = encode_headline(h)
        deliveries.append(await producer.send(topic, value=value, key=key))
    await asyncio.gather(*deliveries)
    return len(deliveries)


async def existing_headline_ids(pool: asyncpg.Pool | asyncpg.Connection, ids: Sequence[str]) -> set[str]:
    """Which of `ids` are already stored in `headlines` (one round trip)."""
    if not ids:
        return set()
    rows = await pool.fetch("SELECT id FROM headlines WHERE id = ANY($1::text[])", list(ids))
    return {r["id"] for r in rows}
