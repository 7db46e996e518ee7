"""The headlines use case the Dagster ``headlines`` asset runs: fetch -> store -> publish.

Contract:
- No dagster import (see CONTRIBUTING.md): the asset calls `ingest_headlines` under ``asyncio.run``
  and turns the returned `HeadlinesRun` into metadata. The call owns its pool and Kafka producer
  and closes them, so no event loop or connection outlives it.
- Publishing happens only after the rows are committed, and only for the headlines this call
  stored (`insert_headlines` reports exactly those), so a re-run never publishes twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from mw_core.adapters.bus import with_producer
from mw_core.adapters.postgres.pool import create_pool
from mw_core.config import Settings
from mw_core.news.fetch import SourceResult, collect
from mw_core.news.parse import Headline
from mw_core.news.store import insert_headlines, newest_headlines, publish_headlines


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
    pool = await create_pool(database_url, min_size=1, max_size=2)
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
