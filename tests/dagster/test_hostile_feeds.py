"""The `headlines` asset over hostile feeds: stored rows, published messages and the markdown
previews in its metadata never carry markup or unsafe links.

The feeds are the hostile corpus (`tests/fixtures/feeds/hostile/`, see its README) served by the
local feed server (`tests.fakes.feeds`); the asset runs with `dg.materialize` against the test
database and broker.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import dagster as dg
import pytest

from mw_core.config import Settings
from mw_dagster.news.assets import AllFeedsFailed, headlines
from mw_dagster.resources import KafkaResource, PostgresResource, RSSResource
from tests.dagster.helpers import consume_topic
from tests.fakes.feeds import Feed, FeedServer

pytestmark = pytest.mark.integration

HOSTILE = Path(__file__).resolve().parents[1] / "fixtures" / "feeds" / "hostile"
MARKUP = re.compile(r"<[A-Za-z/!?]")
# Markdown that would become a link or an image in the UI: [text](url), <autolink>, raw HTML.
MD_ACTIVE = re.compile(r"\]\(|<")


def _feeds() -> list[Path]:
    crafted = sorted((HOSTILE / "crafted").glob("*.xml"))
    sanitize = sorted((HOSTILE / "feedparser" / "wellformed" / "sanitize").glob("*.xml"))
    illformed = sorted((HOSTILE / "feedparser" / "illformed").rglob("*.xml"))
    return crafted + sanitize + illformed


def _meta(result: dg.ExecuteInProcessResult) -> dict[str, object]:
    (event, *_) = reversed(result.asset_materializations_for_node("headlines"))
    return {k: v.value for k, v in event.metadata.items()}


async def _rows(url: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(url)
    try:
        return list(await conn.fetch("SELECT id, title, summary, link FROM headlines"))
    finally:
        await conn.close()


async def _wipe(url: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("TRUNCATE headlines")
    finally:
        await conn.close()


def _assert_clean_markdown(md: str, what: str) -> None:
    assert not MD_ACTIVE.search(md), f"{what}: active markdown/HTML: {md[:500]!r}"
    assert not MARKUP.search(md), f"{what}: markup: {md[:500]!r}"


def test_headlines_asset_over_the_hostile_corpus(
    postgres: PostgresResource, make_settings: object, db_url: str
) -> None:
    assert callable(make_settings)
    settings: Settings = make_settings()
    feeds = _feeds()
    assert len(feeds) >= 250
    with FeedServer() as server:
        urls = [server.add(f"/{i}/{p.name}", Feed(p.read_bytes())) for i, p in enumerate(feeds)]
        resources = {
            "postgres": postgres,
            "kafka": KafkaResource(bootstrap=settings.kafka_bootstrap, topic_news=settings.topic_news),
            "rss": RSSResource(feeds=",".join(urls), timeout_s=10),
        }
        result = dg.materialize([headlines], resources=resources)
    meta = _meta(result)
    assert meta["feeds"] == len(feeds) and int(meta["new"]) > 20  # type: ignore[call-overload]
    _assert_clean_markdown(str(meta["per_feed"]), "per_feed")
    _assert_clean_markdown(str(meta["newest"]), "newest")

    rows = asyncio.run(_rows(db_url))
    assert len(rows) == meta["new"]
    for row in rows:
        for field in ("title", "summary"):
            assert not MARKUP.search(row[field] or ""), (field, row)
        if row["link"] is not None:
            assert urlsplit(row["link"]).scheme in ("http", "https"), row

    published = asyncio.run(consume_topic(settings, settings.topic_news, expect=len(rows), timeout=15.0))
    assert len(published) == len(rows)
    for message in published:
        assert not MARKUP.search(f"{message['title']} {message.get('summary') or ''}"), message
        link = message.get("link")
        assert link is None or urlsplit(str(link)).scheme in ("http", "https"), message


def test_newest_preview_of_each_crafted_feed(postgres: PostgresResource, db_url: str) -> None:
    """One run per crafted feed on an empty table, so the preview shows exactly that feed's items.

    The asset is invoked directly (one attempt): a feed that yields nothing makes it raise
    `AllFeedsFailed`, and `dg.materialize` would sit through its retry policy's backoff.
    """
    previews = 0
    with FeedServer() as server:
        for path in sorted((HOSTILE / "crafted").glob("*.xml")):
            asyncio.run(_wipe(db_url))
            url = server.add(f"/{path.name}", Feed(path.read_bytes()))
            try:
                result = headlines(
                    dg.build_asset_context(),
                    postgres=postgres,
                    kafka=KafkaResource(),
                    rss=RSSResource(feeds=url),
                )
            except AllFeedsFailed:  # not a feed at all / unreadable: reported (plain text), not stored
                continue
            assert isinstance(result, dg.MaterializeResult) and result.metadata is not None
            meta = {k: getattr(v, "value", v) for k, v in result.metadata.items()}
            newest = str(meta["newest"])
            _assert_clean_markdown(newest, path.name)
            _assert_clean_markdown(str(meta["per_feed"]), path.name)
            stored = asyncio.run(_rows(db_url))
            # The preview really shows the hostile items (one table row each), not an empty table.
            assert newest.count("\n") == min(len(stored), 10) + 1 or not stored, (path.name, newest)
            previews += bool(stored)
    assert previews >= 10
