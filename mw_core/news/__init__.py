"""News pipeline core: fetch RSS/Atom feeds, parse, sanitise, score, tag, store and publish.

Used by the Dagster ``headlines`` asset, the ``rss_poll_sensor`` and ``mw news parse``::

    from mw_core import news

    results = await news.collect(settings.rss_feeds, symbols=settings.symbols, cursor=cursor)
    new_ids = await news.insert_headlines(pool, [h for r in results for h in r.items])
    cursor = news.next_cursor(results)

Layout: `sanitize`, `sentiment`, `tagging` and `parse` are pure (no I/O libraries); `fetch`
(httpx, files) and `store` (asyncpg, Kafka producer) are the thin adapters; `run` is the
``headlines`` asset's use case (fetch -> store -> publish). Importing this package stays pure: the
adapter names below are loaded on first attribute access.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from mw_core.news.parse import Headline, ParseResult, decode_headline, encode_headline, parse_feed
from mw_core.news.sanitize import clean_link, clean_text
from mw_core.news.sentiment import score, score_headline
from mw_core.news.tagging import tag_symbols

if TYPE_CHECKING:
    from mw_core.news.fetch import FetchResult, SourceResult, collect, fetch_all, fetch_feed, next_cursor
    from mw_core.news.store import headlines_near, insert_headlines, newest_headlines, publish_headlines

_LAZY = {
    "FetchResult": "mw_core.news.fetch",
    "SourceResult": "mw_core.news.fetch",
    "collect": "mw_core.news.fetch",
    "fetch_all": "mw_core.news.fetch",
    "fetch_feed": "mw_core.news.fetch",
    "next_cursor": "mw_core.news.fetch",
    "headlines_near": "mw_core.news.store",
    "insert_headlines": "mw_core.news.store",
    "newest_headlines": "mw_core.news.store",
    "publish_headlines": "mw_core.news.store",
}


if not TYPE_CHECKING:  # hidden from type checkers, so a misspelt `news.colect` is still an error

    def __getattr__(name: str) -> Any:
        module = _LAZY.get(name)
        if module is None:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        return getattr(importlib.import_module(module), name)


__all__ = [
    "FetchResult",
    "Headline",
    "ParseResult",
    "SourceResult",
    "clean_link",
    "clean_text",
    "collect",
    "decode_headline",
    "encode_headline",
    "fetch_all",
    "fetch_feed",
    "headlines_near",
    "insert_headlines",
    "newest_headlines",
    "next_cursor",
    "parse_feed",
    "publish_headlines",
    "score",
    "score_headline",
    "tag_symbols",
]
