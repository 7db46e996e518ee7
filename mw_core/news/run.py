"""Coroutines that compose `mw_core` adapters for one batch run (fetch -> store -> publish).

Contract:
- No dagster import and no Dagster types (STYLE.md §1): the Dagster assets call these under
  ``asyncio.run`` and turn the returned records into metadata. Each call owns its pool and Kafka
  producer and closes them, so no event loop or connection outlives the call.
- Publishing happens only after the rows are committed, and only for rows this call stored (the
  `mw_core` inserts report exactly those), so a re-run never publishes twice.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from aiokafka import AIOKafkaProducer

from mw_core.adapters import bus, db
from mw_core.config import Settings
from mw_core.enrich.service import EnrichReport, enrich_pending_async, publish_enrichments
from mw_core.news import Headline, SourceResult
from mw_core.news.fetch import collect
from mw_core.news.store import insert_headlines, newest_headlines, publish_headlines

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class FeedOutcome:
    """One feed's share of a headlines run."""

    source: str
    items: int
    new: int
    duplicates: int  # items already stored (or repeated inside the feed)
    not_modified: bool
    error: str | None
    skipped_entries: int


@dataclass(frozen=True, slots=True)
class HeadlinesRun:
    feeds: list[FeedOutcome]
    new_ids: list[str]
    published: int
    newest: list[Headline]

    @property
    def failed(self) -> int:
        return sum(1 for f in self.feeds if f.error is not None)


async def with_producer(settings: Settings, fn: Callable[[AIOKafkaProducer], Awaitable[T]]) -> T:
    """Run ``fn(producer)`` with a started producer (topics ensured first), then stop it."""
    await bus.ensure_topics(settings)
    producer = bus.producer(settings)
    await producer.start()
    try:
        return await fn(producer)
    finally:
        await producer.stop()


def feed_outcomes(results: Sequence[SourceResult], new_ids: Sequence[str]) -> list[FeedOutcome]:
    """Per-feed new/duplicate counts: a new id counts for the first feed that carried it."""
    fresh = set(new_ids)
    credited: set[str] = set()
    out: list[FeedOutcome] = []
    for r in results:
        new = 0
        for h in r.items:
            if h.id in fresh and h.id not in credited:
                credited.add(h.id)
                new += 1
        out.append(
            FeedOutcome(
                source=r.source,
                items=len(r.items),
                new=new,
                duplicates=len(r.items) - new + r.duplicates,
                not_modified=r.not_modified,
                error=r.error,
                skipped_entries=max(0, len(r.errors) - (1 if r.error else 0)),
            )
        )
    return out


async def ingest_headlines(
    database_url: str,
    settings: Settings,
    *,
    timeout_s: float,
    publish: bool,
    preview: int = 10,
) -> HeadlinesRun:
    """Fetch every feed (unconditionally), store new headlines, publish them, read the newest."""
    results = await collect(settings.rss_feeds, symbols=settings.symbols, timeout=timeout_s)
    items = [h for r in results for h in r.items]
    pool = await db.create_pool(database_url, min_size=1, max_size=2)
    try:
        new_ids = await insert_headlines(pool, items)
        newest = await newest_headlines(pool, preview)
    finally:
        await pool.close()
    published = 0
    if publish and new_ids:
        fresh = set(new_ids)
        new_items = list({h.id: h for h in reversed(items) if h.id in fresh}.values())[::-1]
        published = await with_producer(
            settings, lambda p: publish_headlines(p, settings.topic_news, new_items)
        )
    return HeadlinesRun(
        feeds=feed_outcomes(results, new_ids), new_ids=new_ids, published=published, newest=newest
    )


@dataclass(frozen=True, slots=True)
class EnrichmentRun:
    report: EnrichReport
    published: int
    by_symbol: dict[str, int]


async def enrich_and_publish(
    database_url: str, settings: Settings, *, limit: int, publish: bool
) -> EnrichmentRun:
    """Enrich up to `limit` pending anomalies (`mw_core.enrich`) and publish the new rows."""
    pool = await db.create_pool(database_url, min_size=1, max_size=2)
    try:
        report = await enrich_pending_async(pool, settings, limit=limit)
    finally:
        await pool.close()
    published = 0
    if publish and report.rows:
        published = await with_producer(
            settings, lambda p: publish_enrichments(p, settings.topic_alerts, report.rows)
        )
    by_symbol = Counter(r.anomaly.symbol for r in report.rows)
    return EnrichmentRun(report=report, published=published, by_symbol=dict(by_symbol))
