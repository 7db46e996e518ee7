"""Headlines in the real PostgreSQL (idempotent inserts, queries) and on the real broker."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import asyncpg
import orjson
import pytest
from aiokafka import AIOKafkaConsumer

from mw_core.adapters import bus
from mw_core.config import Settings
from mw_core.models import dt_to_ms
from mw_core.news import (
    Headline,
    collect,
    decode_headline,
    headlines_near,
    insert_headlines,
    newest_headlines,
    next_cursor,
    publish_headlines,
)
from tests.conftest import FEED_SYMBOLS, FEEDS
from tests.fakes.feeds import Feed, FeedServer

pytestmark = pytest.mark.integration

SYMBOLS = FEED_SYMBOLS
T0 = datetime(2024, 8, 5, 6, 0, tzinfo=UTC)


def headline(
    n: int,
    *,
    minutes: float | None = 0,
    symbols: tuple[str, ...] = ("BTCUSDT",),
    summary: str = "summary",
    link: str | None = "https://news.example/1",
) -> Headline:
    return Headline(
        id=f"urn:test:{n}",
        source="https://news.example/feed",
        title=f"Headline {n}",
        link=link,
        summary=summary,
        published=None if minutes is None else T0 + timedelta(minutes=minutes),
        sentiment=round(-0.5 + n / 100, 4),
        symbols=symbols,
    )


async def test_insert_is_idempotent(pool: asyncpg.Pool) -> None:
    items = [headline(i, minutes=i) for i in range(10)]
    assert await insert_headlines(pool, items) == [h.id for h in items]
    assert await insert_headlines(pool, items) == []
    more = [*items, headline(10), headline(11)]
    assert await insert_headlines(pool, more) == ["urn:test:10", "urn:test:11"]
    assert await pool.fetchval("SELECT count(*) FROM headlines") == 12
    assert await insert_headlines(pool, []) == []


async def test_duplicates_within_a_batch_and_chunking(pool: asyncpg.Pool) -> None:
    first = headline(1, summary="first")
    items = [first, headline(1, summary="second"), *(headline(i) for i in range(2, 20))]
    new = await insert_headlines(pool, items, chunk_size=7)
    assert new == [f"urn:test:{i}" for i in range(1, 20)]
    assert await pool.fetchval("SELECT summary FROM headlines WHERE id = $1", first.id) == "first"


async def test_roundtrip_preserves_every_field(pool: asyncpg.Pool) -> None:
    items = [
        headline(1, minutes=5, symbols=("BTCUSDT", "ETHUSDT")),
        headline(2, minutes=None, symbols=(), summary="", link=None),
        Headline(
            id="sha256:" + "ab" * 32,
            source="local.xml",
            title="Quotes ' \" and unicode — “ok” 🚀 and a comma, in {braces}",
            link="https://x.example/a?b=1&c=2",
            summary="Text with , commas and \\ backslashes",
            published=T0 + timedelta(microseconds=123456),
            sentiment=-1.0,
            symbols=("SOLUSDT",),
        ),
    ]
    await insert_headlines(pool, items)
    stored = {h.id: h for h in await newest_headlines(pool, 10)}
    assert stored == {h.id: h for h in items}
    assert all(h.published is None or h.published.tzinfo is UTC for h in stored.values())
    row = await pool.fetchrow("SELECT summary, symbols FROM headlines WHERE id = 'urn:test:2'")
    assert row is not None and row["summary"] is None and row["symbols"] == []


async def test_newest_headlines_order_limit_and_symbol(pool: asyncpg.Pool) -> None:
    await insert_headlines(
        pool,
        [
            headline(1, minutes=0),
            headline(2, minutes=10, symbols=("ETHUSDT",)),
            headline(3, minutes=20),
        ],
    )
    assert [h.id for h in await newest_headlines(pool, 2)] == ["urn:test:3", "urn:test:2"]
    assert [h.id for h in await newest_headlines(pool, 10, symbol="BTCUSDT")] == ["urn:test:3", "urn:test:1"]
    assert await newest_headlines(pool, 10, symbol="XRPUSDT") == []


async def test_headlines_near_window_symbol_and_closeness(pool: asyncpg.Pool) -> None:
    await insert_headlines(
        pool,
        [
            headline(1, minutes=-31),  # just outside the window
            headline(2, minutes=-30),  # on the edge: inside
            headline(3, minutes=-2),
            headline(4, minutes=5),
            headline(5, minutes=29.9),
            headline(6, minutes=31),
            headline(7, minutes=1, symbols=("ETHUSDT",)),  # other symbol
            headline(8, minutes=0, symbols=("ETHUSDT", "BTCUSDT")),
        ],
    )
    ts = dt_to_ms(T0)
    near = await headlines_near(pool, "BTCUSDT", ts)
    assert [h.id for h in near] == ["urn:test:8", "urn:test:3", "urn:test:4", "urn:test:5", "urn:test:2"]
    assert [h.id for h in await headlines_near(pool, "BTCUSDT", ts, window_s=180)] == [
        "urn:test:8",
        "urn:test:3",
    ]
    assert [h.id for h in await headlines_near(pool, "ETHUSDT", ts)] == ["urn:test:8", "urn:test:7"]
    assert len(await headlines_near(pool, "BTCUSDT", ts, limit=2)) == 2
    assert await headlines_near(pool, "SOLUSDT", ts) == []


async def test_headlines_without_date_count_at_fetch_time(pool: asyncpg.Pool) -> None:
    await insert_headlines(pool, [headline(1, minutes=None)])
    now_ms = dt_to_ms(datetime.now(UTC))
    assert [h.id for h in await headlines_near(pool, "BTCUSDT", now_ms)] == ["urn:test:1"]
    assert await headlines_near(pool, "BTCUSDT", dt_to_ms(T0)) == []


async def test_poll_store_poll_again_stores_nothing_new(pool: asyncpg.Pool) -> None:
    with FeedServer() as server:
        rss = server.add("/rss.xml", Feed((FEEDS / "rss2_coindesk.xml").read_bytes()))
        atom = server.add("/atom.xml", Feed((FEEDS / "atom_decrypt.xml").read_bytes()))
        results = await collect([rss, atom], symbols=SYMBOLS)
        new_ids = await insert_headlines(pool, [h for r in results for h in r.items])
        assert len(new_ids) == 9  # 6 RSS (one with a derived title) + 3 Atom
        cursor = next_cursor(results)

        # conditional poll: nothing downloaded, nothing stored
        again = await collect([rss, atom], symbols=SYMBOLS, cursor=cursor)
        assert all(r.not_modified for r in again)
        assert await insert_headlines(pool, [h for r in again for h in r.items]) == []

        # unconditional re-poll (e.g. lost cursor): everything parsed again, still nothing new
        fresh = await collect([rss, atom], symbols=SYMBOLS)
        assert sum(len(r.items) for r in fresh) == 9
        assert await insert_headlines(pool, [h for r in fresh for h in r.items]) == []

    near = await headlines_near(pool, "BTCUSDT", dt_to_ms(datetime(2024, 8, 5, 6, 15, tzinfo=UTC)))
    assert near[0].title.startswith("Bitcoin Plunges")


async def test_publish_headlines_to_the_news_topic(settings: Settings) -> None:
    items = [headline(i, minutes=i, symbols=("BTCUSDT", "ETHUSDT")[: i % 3]) for i in range(5)]
    await bus.ensure_topics(settings)
    producer = bus.producer(settings)
    await producer.start()
    try:
        assert await publish_headlines(producer, settings.topic_news, items) == 5
    finally:
        await producer.stop()

    consumer = AIOKafkaConsumer(
        settings.topic_news,
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=None,  # no group coordination: plain assignment of every partition
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    received: list[tuple[bytes, bytes]] = []
    try:
        deadline = asyncio.get_running_loop().time() + 15
        while len(received) < len(items) and asyncio.get_running_loop().time() < deadline:
            batch = await consumer.getmany(timeout_ms=300)
            received.extend((r.key, r.value) for records in batch.values() for r in records)
    finally:
        await consumer.stop()
    assert [key.decode() for key, _ in received] == [h.id for h in items]
    assert [decode_headline(value) for _, value in received] == items
    assert orjson.loads(received[1][1])["symbols"] == ["BTCUSDT"]
