"""Fetching feeds over real HTTP from a local server: conditional GET, errors, limits, collect()."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from mw_core.news import collect, fetch_all, fetch_feed, next_cursor
from mw_core.news.fetch import display_source
from tests.conftest import FIXTURES
from tests.fakes.feeds import Feed, FeedServer, Redirect, Slow, Status

pytestmark = pytest.mark.integration

FEEDS = FIXTURES / "feeds"
RSS = (FEEDS / "rss2_coindesk.xml").read_bytes()
ATOM = (FEEDS / "atom_decrypt.xml").read_bytes()
MALFORMED = (FEEDS / "malformed.xml").read_bytes()
SYMBOLS = ["BTCUSDT", "ETHUSDT", "SOLUSDT", "BNBUSDT", "XRPUSDT"]


@pytest.fixture(scope="module")
def server() -> Iterator[FeedServer]:
    with FeedServer() as srv:
        srv.add("/rss.xml", Feed(RSS))
        srv.add("/atom.xml", Feed(ATOM, content_type="application/atom+xml", etag=False))
        srv.add("/etag-only.xml", Feed(RSS, last_modified=False))
        srv.add("/malformed.xml", Feed(MALFORMED))
        srv.add("/page.html", Feed((FEEDS / "not_a_feed.html").read_bytes(), content_type="text/html"))
        srv.add("/missing.xml", Status(404))
        srv.add("/error.xml", Status(503))
        srv.add("/slow.xml", Slow(RSS, delay_s=30))
        srv.add("/trickle.xml", Slow(RSS, trickle_s=0.05))
        srv.add("/moved", Redirect("/rss.xml", code=301))
        srv.add("/loop", Redirect("/loop"))
        srv.add("/gzip.xml", Feed(RSS, gzip=True))
        srv.add("/no-length.xml", Feed(RSS, send_length=False))
        yield srv


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as http:
        yield http


async def test_conditional_get_by_etag(server: FeedServer, client: httpx.AsyncClient) -> None:
    url = server.url("/etag-only.xml")
    first = await fetch_feed(client, url, etag=None, last_modified=None, timeout=5)
    assert (first.status, first.error, first.not_modified) == (200, None, False)
    assert first.content == RSS
    assert first.etag is not None and first.last_modified is None

    second = await fetch_feed(client, url, etag=first.etag, last_modified=None, timeout=5)
    assert (second.status, second.not_modified, second.content, second.error) == (304, True, None, None)
    assert second.etag == first.etag
    assert server.requests_to("/etag-only.xml")[-1].headers["if-none-match"] == first.etag


async def test_conditional_get_by_last_modified(server: FeedServer, client: httpx.AsyncClient) -> None:
    url = server.url("/atom.xml")
    first = await fetch_feed(client, url, etag=None, last_modified=None, timeout=5)
    assert first.status == 200 and first.etag is None and first.last_modified is not None
    second = await fetch_feed(client, url, etag=None, last_modified=first.last_modified, timeout=5)
    assert second.not_modified and second.last_modified == first.last_modified
    assert server.requests_to("/atom.xml")[-1].headers["if-modified-since"] == first.last_modified


async def test_changed_content_is_fetched_again(client: httpx.AsyncClient) -> None:
    with FeedServer() as srv:
        url = srv.add("/feed.xml", Feed(RSS))
        first = await fetch_feed(client, url, etag=None, last_modified=None, timeout=5)
        srv.set_body("/feed.xml", ATOM)
        second = await fetch_feed(client, url, etag=first.etag, last_modified=first.last_modified, timeout=5)
        assert second.status == 200 and second.content == ATOM
        assert second.etag != first.etag and second.last_modified != first.last_modified
        third = await fetch_feed(client, url, etag=second.etag, last_modified=second.last_modified, timeout=5)
        assert third.not_modified


@pytest.mark.parametrize(
    ("path", "error"), [("/missing.xml", "HTTP 404 Not Found"), ("/error.xml", "HTTP 503")]
)
async def test_http_errors_are_results_and_keep_validators(
    server: FeedServer, client: httpx.AsyncClient, path: str, error: str
) -> None:
    result = await fetch_feed(client, server.url(path), etag='"old"', last_modified="yesterday", timeout=5)
    assert result.error is not None and result.error.startswith(error)
    assert result.content is None and not result.not_modified
    assert (result.etag, result.last_modified) == ('"old"', "yesterday")


async def test_slow_server_times_out(server: FeedServer, client: httpx.AsyncClient) -> None:
    started = time.perf_counter()
    result = await fetch_feed(client, server.url("/slow.xml"), etag=None, last_modified=None, timeout=0.3)
    assert result.error == "timeout after 0.3s"
    assert time.perf_counter() - started < 2


async def test_trickling_body_hits_the_total_deadline(server: FeedServer, client: httpx.AsyncClient) -> None:
    # Every read arrives well within a per-read timeout; only a total deadline stops this.
    started = time.perf_counter()
    result = await fetch_feed(client, server.url("/trickle.xml"), etag=None, last_modified=None, timeout=0.5)
    assert result.error == "timeout after 0.5s"
    assert time.perf_counter() - started < 2


@pytest.mark.parametrize("path", ["/rss.xml", "/no-length.xml"])
async def test_size_cap(server: FeedServer, client: httpx.AsyncClient, path: str) -> None:
    result = await fetch_feed(
        client, server.url(path), etag=None, last_modified=None, timeout=5, max_bytes=1000
    )
    assert result.error is not None and "larger than 1000 bytes" in result.error
    assert result.content is None


async def test_redirects_gzip_and_streamed_bodies(server: FeedServer, client: httpx.AsyncClient) -> None:
    for path in ("/moved", "/gzip.xml", "/no-length.xml"):
        result = await fetch_feed(client, server.url(path), etag=None, last_modified=None, timeout=5)
        assert (result.error, result.status, result.content) == (None, 200, RSS), path
    looped = await fetch_feed(client, server.url("/loop"), etag=None, last_modified=None, timeout=5)
    assert looped.error is not None and "TooManyRedirects" in looped.error


async def test_unreachable_and_unsupported(client: httpx.AsyncClient) -> None:
    refused = await fetch_feed(client, "http://127.0.0.1:9/feed", etag=None, last_modified=None, timeout=2)
    assert refused.error is not None and refused.status is None
    for url in ("ftp://127.0.0.1/feed", "gopher://x/"):
        result = await fetch_feed(client, url, etag=None, last_modified=None, timeout=2)
        assert result.error is not None and "unsupported URL scheme" in result.error
    for url in ("http://[::1/feed", "file://[::1/x", "bad\x00path"):
        bad = await fetch_feed(client, url, etag=None, last_modified=None, timeout=2)
        assert bad.error is not None, url


async def test_files_and_file_urls(tmp_path: Path, client: httpx.AsyncClient) -> None:
    path = tmp_path / "feed.xml"
    path.write_bytes(RSS)
    for source in (str(path), path.as_uri()):
        first = await fetch_feed(client, source, etag=None, last_modified=None, timeout=5)
        assert (first.content, first.error, first.status) == (RSS, None, None)
        again = await fetch_feed(client, source, etag=first.etag, last_modified=None, timeout=5)
        assert again.not_modified and again.content is None
    path.write_bytes(ATOM)
    changed = await fetch_feed(client, str(path), etag=first.etag, last_modified=None, timeout=5)
    assert changed.content == ATOM
    missing = await fetch_feed(client, str(tmp_path / "nope.xml"), etag='"e"', last_modified=None, timeout=5)
    assert missing.error is not None and "cannot read" in missing.error and missing.etag == '"e"'
    big = await fetch_feed(client, str(path), etag=None, last_modified=None, timeout=5, max_bytes=10)
    assert big.error is not None and "larger than" in big.error
    assert display_source(str(path)) == display_source(path.as_uri()) == "feed.xml"


async def test_fetch_all_is_concurrent_and_ordered(server: FeedServer) -> None:
    urls = [server.url("/rss.xml"), server.url("/slow.xml"), server.url("/atom.xml"), server.url("/rss.xml")]
    started = time.perf_counter()
    results = await fetch_all(urls, {}, timeout=0.5)
    assert time.perf_counter() - started < 2
    assert [r.url for r in results] == urls[:3]  # duplicates fetched once, input order kept
    assert [r.error for r in results] == [None, "timeout after 0.5s", None]


async def test_collect_isolates_broken_sources(server: FeedServer, tmp_path: Path) -> None:
    local = tmp_path / "local.xml"
    local.write_bytes(ATOM)
    sources = [
        server.url("/rss.xml"),
        server.url("/missing.xml"),
        server.url("/slow.xml"),
        server.url("/malformed.xml"),
        server.url("/page.html"),
        str(local),
        str(tmp_path / "absent.xml"),
    ]
    results = await collect(sources, symbols=SYMBOLS, timeout=0.5)
    by = {r.source: r for r in results}
    assert [r.source for r in results] == sources

    rss = by[server.url("/rss.xml")]
    assert rss.ok and len(rss.items) == 6 and rss.duplicates == 1
    assert rss.errors == ["entry 5: no title"]  # entry 4 has only a description: kept, title derived
    assert {h.source for h in rss.items} == {server.url("/rss.xml")}
    assert by[server.url("/missing.xml")].error == "HTTP 404 Not Found"
    assert by[server.url("/slow.xml")].error == "timeout after 0.5s"
    malformed = by[server.url("/malformed.xml")]
    assert malformed.ok and malformed.bozo is not None and len(malformed.items) == 3
    assert by[server.url("/page.html")].error == "not an RSS/Atom feed"
    assert by[str(local)].ok and {h.source for h in by[str(local)].items} == {"local.xml"}
    assert (by[str(tmp_path / "absent.xml")].error or "").startswith("cannot read")

    # Second poll with the cursor: unchanged sources are not modified, broken ones still fail.
    cursor = next_cursor(results)
    assert server.url("/missing.xml") not in cursor  # nothing to remember for a failed source
    again = {r.source: r for r in await collect(sources, symbols=SYMBOLS, cursor=cursor, timeout=0.5)}
    for source in (
        server.url("/rss.xml"),
        server.url("/malformed.xml"),
        server.url("/page.html"),
        str(local),
    ):
        assert again[source].not_modified and again[source].items == [] and again[source].ok, source
    assert again[server.url("/missing.xml")].error == "HTTP 404 Not Found"
    assert next_cursor(list(again.values())) == cursor


async def test_collect_with_injected_client_and_no_sources(server: FeedServer) -> None:
    async with httpx.AsyncClient(headers={"User-Agent": "test-agent"}) as http:
        results = await collect([server.url("/rss.xml")], symbols=SYMBOLS, client=http)
        assert results[0].ok and not http.is_closed
    assert server.requests_to("/rss.xml")[-1].headers["user-agent"] == "test-agent"
    assert await collect([], symbols=SYMBOLS) == []


async def test_collect_does_not_block_the_event_loop(server: FeedServer) -> None:
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.01)

    task = asyncio.create_task(ticker())
    try:
        await collect([server.url("/rss.xml"), server.url("/slow.xml")], symbols=SYMBOLS, timeout=0.3)
    finally:
        task.cancel()
    assert ticks >= 5
