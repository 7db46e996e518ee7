"""Hostile and malformed feeds through `mw_core.news.parse_feed`: nothing escapes, nothing renders.

The corpus is `tests/fixtures/feeds/hostile/` (feedparser's own ill-formed / encoding / entity /
xml:base / sanitizer test feeds plus our crafted attacks, see its README) and a few documents too
large to store, generated here. For every document, under an http(s) and a file source:

- `parse_feed` returns (no exception escapes) in bounded time;
- no title or summary contains markup: ``<`` followed by a letter, ``/``, ``!`` or ``?``;
- every link is ``None`` or an absolute http(s) URL with a host and no user-info;
- ids and texts carry no control characters.

Entries without a title get one derived from their (sanitised) description, and entries whose
title sanitises to nothing are dropped before their hostile summary is seen; so every entry is
also fed to `parse_entry` with each of its text fields (summary, content, title) in the title's
place.
"""

from __future__ import annotations

import io
import re
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import feedparser
import pytest

from mw_core.news import Headline, parse_feed
from mw_core.news.parse import parse_entry
from tests.conftest import FIXTURES

pytestmark = pytest.mark.unit

HOSTILE = FIXTURES / "feeds" / "hostile"
SYMBOLS = ["BTCUSDT", "ETHUSDT", "SOLUSDT", "XRPUSDT", "DOGEUSDT"]
SOURCES = ["https://hostile.example/feeds/news.xml", "hostile-feed.xml"]
MARKUP = re.compile(r"<[A-Za-z/!?]")
CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
MAX_SECONDS = 5.0  # per document; the largest generated one parses in well under a second


def _corpus() -> list[Path]:
    return sorted(p for p in HOSTILE.rglob("*.xml") if p.is_file())


def _generated() -> dict[str, bytes]:
    """Documents too large to keep as fixtures: deep nesting, huge fields, many items."""

    def rss(items: str) -> bytes:
        return f'<?xml version="1.0"?><rss version="2.0"><channel><title>g</title>{items}</channel></rss>'.encode()

    deep = "&lt;div&gt;" * 20_000 + "deep &lt;script&gt;alert(1)&lt;/script&gt;" + "&lt;/div&gt;" * 20_000
    big = "Bitcoin " + "&lt;b&gt;x&lt;/b&gt;" * 30_000 + "&lt;img src=x onerror=alert(1)"
    many = "".join(
        f"<item><title>&lt;script&gt;{i}&lt;/script&gt;item {i}</title><link>javascript:alert({i})</link>"
        f"<guid>g{i}</guid><description>&lt;img src=x onerror=alert({i})&gt;</description></item>"
        for i in range(2_000)
    )
    return {
        "deep_nesting": rss(
            f"<item><title>{'&lt;i&gt;' * 2_000}deep title</title><link>https://news.example/b1</link>"
            f"<description>{deep}</description></item>"
        ),
        "huge_fields": rss(
            f"<item><title>{'T' * 100_000}&lt;script&gt;</title><link>https://news.example/b2</link>"
            f"<description>{big}</description></item>"
        ),
        "many_items": rss(many),
        "cdata_flood": rss("<item><title>" + "<![CDATA[<]]>script<![CDATA[>]]>" * 5_000 + "</title></item>"),
    }


def _entries(raw: bytes) -> list[Mapping[str, Any]]:
    """The feedparser entries of a document, read the way `parse_feed` reads them."""
    doc = feedparser.parse(
        io.BytesIO(raw),
        response_headers={"content-type": "application/xml"},
        resolve_relative_uris=False,
        sanitize_html=False,
    )
    return list(doc.get("entries") or [])


def _as_titles(entry: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """`entry` with each of its text fields moved into the title (hostile text in every slot)."""
    fields: list[tuple[Any, Any]] = [(entry.get("title"), entry.get("title_detail"))]
    fields.append((entry.get("summary"), entry.get("summary_detail")))
    fields.extend((c.get("value"), c) for c in entry.get("content") or [] if isinstance(c, Mapping))
    for value, detail in fields:
        if isinstance(value, str) and value:
            yield {**entry, "title": value, "title_detail": detail}


def assert_safe(item: Headline, where: str) -> None:
    """The invariants every stored headline must satisfy, whatever the feed contained."""
    for field, text in (("title", item.title), ("summary", item.summary)):
        assert not MARKUP.search(text), f"{where}: markup in {field}: {text[:300]!r}"
        assert not CONTROL.search(text), f"{where}: control character in {field}: {text[:300]!r}"
    assert item.title.strip(), f"{where}: empty title kept"
    if item.link is not None:
        parts = urlsplit(item.link)
        assert parts.scheme in ("http", "https"), f"{where}: link scheme {item.link[:200]!r}"
        assert parts.hostname, f"{where}: link without host {item.link[:200]!r}"
        assert "@" not in parts.netloc, f"{where}: user-info in link {item.link[:200]!r}"
        assert not CONTROL.search(item.link) and " " not in item.link, f"{where}: {item.link[:200]!r}"
    assert item.id and not CONTROL.search(item.id), f"{where}: id {item.id[:200]!r}"


def test_the_corpus_is_broad() -> None:
    files = _corpus()
    folders = {p.relative_to(HOSTILE).parts[0] for p in files}
    assert folders == {"feedparser", "crafted"}
    assert len(files) >= 900, len(files)
    assert (HOSTILE / "feedparser" / "LICENSE").is_file()


@pytest.mark.parametrize("source", SOURCES)
def test_every_fixture_parses_without_markup_or_unsafe_links(source: str) -> None:
    parsed = items = 0
    with_items: set[str] = set()
    for path in _corpus():
        where = str(path.relative_to(HOSTILE))
        started = time.perf_counter()
        result = parse_feed(path.read_bytes(), source=source, symbols=SYMBOLS)
        assert time.perf_counter() - started < MAX_SECONDS, f"{where}: too slow"
        parsed += 1
        for item in result.items:
            assert_safe(item, where)
            assert item.source == source
            items += 1
            with_items.add(where.split("/")[0] + "/" + where.split("/")[1])
        assert all(isinstance(e, str) for e in result.errors)  # reported, never raised
    # Not vacuous: documents of both halves of the corpus yield entries.
    assert parsed >= 900 and items >= 150, (parsed, items)
    assert {
        "feedparser/wellformed",
        "feedparser/illformed",
        "crafted/rss_script_everywhere.xml",
    } <= with_items


def test_every_text_field_of_every_entry_is_cleaned_as_a_title() -> None:
    checked = 0
    unreadable: list[str] = []
    for path in _corpus():
        where = str(path.relative_to(HOSTILE))
        try:
            entries = _entries(path.read_bytes())
        except (UnicodeError, ValueError):  # feedparser itself raises: see the invalid-charref tests
            unreadable.append(where)
            continue
        for entry in entries:
            for variant in _as_titles(entry):
                item = parse_entry(variant, source=SOURCES[0], symbols=SYMBOLS)
                if item is not None:
                    assert_safe(item, where)
                    checked += 1
    assert unreadable == ["crafted/rss_invalid_charrefs.xml"]
    assert checked >= 400, checked


@pytest.mark.parametrize("name", sorted(_generated()))
def test_generated_oversized_documents(name: str) -> None:
    started = time.perf_counter()
    result = parse_feed(_generated()[name], source=SOURCES[0], symbols=SYMBOLS)
    assert time.perf_counter() - started < MAX_SECONDS
    for item in result.items:
        assert_safe(item, name)
        assert len(item.title) <= 300 and len(item.summary) <= 1000
    if name == "many_items":
        assert len(result.items) == 2_000 and all(i.link is None for i in result.items)


def test_crafted_attacks_are_neutralised_not_dropped() -> None:
    """The crafted feeds keep their readable text: sanitising must not lose the headline itself."""
    result = parse_feed(
        (HOSTILE / "crafted" / "rss_script_everywhere.xml").read_bytes(), source=SOURCES[0], symbols=SYMBOLS
    )
    titles = [i.title for i in result.items]
    assert titles[0] == "Bitcoin rallies" and titles[1] == "Ether dips"
    assert "alert" not in " ".join(titles[:2])  # script bodies are dropped, not shown as text
    assert result.items[0].symbols == ("BTCUSDT",)

    atom = parse_feed(
        (HOSTILE / "crafted" / "atom_links_and_xhtml.xml").read_bytes(), source=SOURCES[0], symbols=SYMBOLS
    )
    links = {i.id: i.link for i in atom.items}
    # Relative links resolve against the https feed URL (never against the `javascript:` xml:base;
    # the full-width "ｊavascript:" is a relative path); every javascript:/data:/vbscript:/file:/
    # mailto:/wss: variant (mixed case, tab, newline, entity-encoded) and user-info URL is dropped.
    assert {k: v for k, v in links.items() if v} == {
        "urn:a4": "https://hostile.example/feeds/x.html",
        "urn:a10": "https://evil.example/x",
        "urn:a13": "https://hostile.example/feeds/\uff4aavascript:alert(1)",
    }
    # type="text" markup is literal text; sanitised, nothing readable is left, so the entry is dropped.
    assert "urn:a3" not in links and any("no title" in e for e in atom.errors)

    entities = parse_feed(
        (HOSTILE / "crafted" / "rss_doctype_entities.xml").read_bytes(), source=SOURCES[0], symbols=SYMBOLS
    )
    text = " ".join(f"{i.title} {i.summary}" for i in entities.items)
    assert "root:" not in text and len(text) < 2_000  # no XXE file contents, no entity explosion


def test_invalid_character_references_are_contained() -> None:
    """``&#xD800;`` / ``&#1114112;`` made feedparser raise; they become U+FFFD and parsing goes on."""
    result = parse_feed(
        (HOSTILE / "crafted" / "rss_invalid_charrefs.xml").read_bytes(), source=SOURCES[0], symbols=SYMBOLS
    )
    assert result.error is None
    assert len(result.items) == 4
    for item in result.items:
        assert_safe(item, "rss_invalid_charrefs.xml")


def test_invalid_character_references_do_not_lose_the_rest_of_the_feed() -> None:
    result = parse_feed(
        (HOSTILE / "crafted" / "rss_invalid_charrefs.xml").read_bytes(), source=SOURCES[0], symbols=SYMBOLS
    )
    titles = {i.title for i in result.items}
    assert {"Bitcoin before the bad items", "Ether after the bad items"} <= titles
