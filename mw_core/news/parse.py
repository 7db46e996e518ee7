"""Pure RSS / Atom parsing into `Headline` domain records, plus the `news` topic codec.

One raw payload (an RSS 2.0 item) and what it becomes::

    <item>
      <title>Bitcoin &amp; Ether rally as ETF approval nears</title>
      <link>https://news.example.com/markets/btc-eth-rally</link>
      <guid isPermaLink="false">news-example-48213</guid>
      <pubDate>Mon, 05 Aug 2024 10:15:00 +0200</pubDate>
      <description>&lt;p&gt;BTC jumped 5%.&lt;script&gt;alert(1)&lt;/script&gt;&lt;/p&gt;</description>
    </item>

    Headline(id="https://news.example.com/feed.xml#news-example-48213",
             source="https://news.example.com/feed.xml",
             title="Bitcoin & Ether rally as ETF approval nears",
             link="https://news.example.com/markets/btc-eth-rally", summary="BTC jumped 5%.",
             published=datetime(2024, 8, 5, 8, 15, tzinfo=UTC), sentiment=0.5448,
             symbols=("BTCUSDT", "ETHUSDT"))

Contract:
- `parse_feed` never raises for bad input and never touches the network or disk: feedparser
  only ever sees an in-memory stream (handing it a ``str`` or ``bytes`` would make it open URLs
  or files). Malformed XML sets ``bozo`` and keeps the entries read before the error; when
  nothing could be read, `ParseResult.error` says why.
- Stable ids: a URI-shaped guid/id (``https://...``, ``urn:...``, ``tag:...``) is used as is;
  other guids ("12345") are namespaced as ``<source>#<guid>`` because they are only unique per
  feed; without a guid the cleaned link; without either ``sha256:<hex of source + title>``, or
  of source + the whole sanitised description for an entry whose title was derived from it (two
  items may share a first sentence). Ids longer than `ID_MAX` are replaced by their sha256.
  Duplicate ids within a feed keep the first.
- An entry without a title (RSS 2.0 allows an item with only a description) gets one derived
  from its sanitised description: the first sentence, capped at `DERIVED_TITLE_MAX` characters
  (an ellipsis marks a cut). A title that is present but sanitises to nothing (markup only) is not
  replaced: the entry is hostile, not untitled. Entries left without a title are counted in
  `ParseResult.errors`.
- ``published`` comes from published/updated (feedparser normalises to UTC) as an aware UTC
  datetime, or ``None``.
- Titles and summaries are sanitised (`mw_core.news.sanitize`), links are http(s) or ``None``.
"""

from __future__ import annotations

import calendar
import hashlib
import io
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urljoin

import feedparser
import orjson

from mw_core.news.sanitize import clean_link, clean_summary, clean_text, clean_title
from mw_core.news.sentiment import score_headline
from mw_core.news.tagging import tag_symbols

ID_MAX = 512
DERIVED_TITLE_MAX = 160
# A sentence ends at . ! ? or an ellipsis followed by white space (and then anything).
_SENTENCE_END = re.compile(r"(?<=[.!?\u2026])\s+")
_HTML_TYPES = frozenset({"text/html", "application/xhtml+xml", "html", "xhtml"})
_URI_ID = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:\S")
_ID_JUNK = re.compile(r"[\x00-\x1f\x7f]")
# feedparser complaints that do not mean the document is broken.
_BENIGN_BOZO = (feedparser.CharacterEncodingOverride, feedparser.NonXMLContentType)


@dataclass(frozen=True, slots=True)
class Headline:
    """One news item, sanitised and scored. `published` is aware UTC (or unknown)."""

    id: str
    source: str
    title: str
    link: str | None
    summary: str
    published: datetime | None
    sentiment: float
    symbols: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ParseResult:
    """Outcome of parsing one feed document.

    Attributes:
        items: Headlines in feed order, unique by id.
        errors: One message per entry that was skipped (e.g. no title), plus `error` if set.
        bozo: feedparser's complaint about the document (malformed XML, encoding), if any.
        error: Set when the document yielded no headlines because it is broken, empty or not a feed.
        duplicates: Entries dropped because an earlier entry had the same id.
        version: Detected format (``rss20``, ``atom10``, ...), ``""`` when unknown.
    """

    items: list[Headline]
    errors: list[str]
    bozo: str | None
    error: str | None = None
    duplicates: int = 0
    version: str = ""


def _hash_id(*parts: str) -> str:
    return "sha256:" + hashlib.sha256("\x1f".join(parts).encode("utf-8", "replace")).hexdigest()


def make_id(
    *, guid: str | None, link: str | None, title: str, source: str, description: str | None = None
) -> str:
    """The stable id of an entry (see module contract).

    ``description`` is given only when the title was derived from it: the fallback hash then covers
    the whole description (a distinct hash domain: the title is left out).
    """
    guid = _ID_JUNK.sub("", guid or "").strip()
    if guid:
        candidate = guid if _URI_ID.match(guid) else f"{source}#{guid}"
    elif link:
        candidate = link
    elif description is not None:
        return _hash_id(source, "description", description)
    else:
        return _hash_id(source, title)
    return candidate if len(candidate) <= ID_MAX else _hash_id(candidate)


def _is_html(detail: Any) -> bool:
    kind = detail.get("type") if isinstance(detail, Mapping) else None
    # feedparser reports a type for every text construct; unknown means treat as HTML (stricter).
    return kind is None or str(kind).lower() in _HTML_TYPES


def _published(entry: Mapping[str, Any]) -> datetime | None:
    for key in ("published_parsed", "updated_parsed", "created_parsed"):
        parsed = entry.get(key)
        if parsed:
            try:
                return datetime.fromtimestamp(calendar.timegm(parsed), tz=UTC)
            except (TypeError, ValueError, OverflowError, OSError):
                continue
    return None


def _summary(entry: Mapping[str, Any]) -> str:
    raw = entry.get("summary")
    detail = entry.get("summary_detail")
    if not raw:
        content = entry.get("content") or []
        first = content[0] if content and isinstance(content[0], Mapping) else {}
        raw, detail = first.get("value"), first
    elif detail is None:
        content = entry.get("content") or []
        detail = content[0] if content and isinstance(content[0], Mapping) else None
    return clean_summary(raw if isinstance(raw, str) else None, is_html=_is_html(detail))


def _absolute(link: str, source: str) -> str:
    """Resolve a relative link against an http(s) feed URL (file sources have no base)."""
    if source.lower().startswith(("http://", "https://")) and not _URI_ID.match(link):
        return urljoin(source, link)
    return link


def title_from_description(summary: str) -> str:
    """The first sentence of a sanitised description, capped at `DERIVED_TITLE_MAX` characters."""
    first = _SENTENCE_END.split(summary.strip(), maxsplit=1)[0]
    # `summary` is already sanitised plain text: re-cleaning as plain text only caps it.
    return clean_text(first, max_len=DERIVED_TITLE_MAX, is_html=False)


def parse_entry(entry: Mapping[str, Any], *, source: str, symbols: Sequence[str]) -> Headline | None:
    """One feedparser entry -> `Headline`, or ``None`` when it has no usable title."""
    raw_title = entry.get("title")
    raw_title = raw_title if isinstance(raw_title, str) else None
    title = clean_title(raw_title, is_html=_is_html(entry.get("title_detail")))
    summary = _summary(entry)
    derived = not title and not (raw_title or "").strip()
    if derived:
        title = title_from_description(summary)
    if not title:
        return None
    raw_link = entry.get("link")
    link = clean_link(_absolute(raw_link.strip(), source) if isinstance(raw_link, str) else None)
    raw_id = entry.get("id")
    return Headline(
        id=make_id(
            guid=raw_id if isinstance(raw_id, str) else None,
            link=link,
            title=title,
            source=source,
            description=summary if derived else None,
        ),
        source=source,
        title=title,
        link=link,
        summary=summary,
        published=_published(entry),
        sentiment=round(score_headline(title, summary), 4),
        symbols=tag_symbols(f"{title}\n{summary}", symbols),
    )


_CHARREF = re.compile(rb"&#(?:[xX]([0-9a-fA-F]{1,8})|([0-9]{1,10}));")


def _charref_ok(match: re.Match[bytes]) -> bytes:
    hex_digits, dec_digits = match.groups()
    code = int(hex_digits, 16) if hex_digits else int(dec_digits)
    if code == 0 or 0xD800 <= code <= 0xDFFF or code > 0x10FFFF:
        return b"&#xFFFD;"  # feedparser raises on these and would lose the whole feed
    return match.group(0)


def _neutralise_bad_charrefs(content: bytes) -> bytes:
    """Replace numeric character references no XML parser accepts (``&#xD800;``, ``&#1114112;``)."""
    return _CHARREF.sub(_charref_ok, content) if b"&#" in content else content


def parse_feed(content: bytes, *, source: str, symbols: Sequence[str]) -> ParseResult:
    """Parse one RSS/Atom document into sanitised, scored, tagged headlines.

    Args:
        content: The raw document (any encoding feedparser can detect).
        source: Feed URL or file name; stored on each headline and namespaces fallback ids.
        symbols: Configured symbols (``Settings.symbols``) for tagging.

    Returns:
        A `ParseResult`; never raises for malformed input.
    """
    # Our own sanitiser strips everything, and must see the raw HTML: feedparser's sanitiser
    # keeps the text inside <iframe>/<object>. No Content-Location: feedparser would resolve bare
    # guids ("7") against it into fake URLs; relative links are resolved in `parse_entry` instead.
    # The content type makes feedparser trust the document's own XML encoding declaration.
    headers = {"content-type": "application/xml"}
    content = _neutralise_bad_charrefs(content)
    try:
        doc = feedparser.parse(
            io.BytesIO(content), response_headers=headers, resolve_relative_uris=False, sanitize_html=False
        )
    except Exception as exc:  # feedparser catches parser errors itself; this is a last resort
        msg = f"feedparser failed: {type(exc).__name__}: {exc}"
        return ParseResult(items=[], errors=[msg], bozo=msg, error=msg)

    bozo_exc = doc.get("bozo_exception") if doc.get("bozo") else None
    bozo = f"{type(bozo_exc).__name__}: {bozo_exc}" if bozo_exc is not None else None
    version = str(doc.get("version") or "")
    entries = doc.get("entries") or []

    items: list[Headline] = []
    errors: list[str] = []
    seen: set[str] = set()
    duplicates = 0
    for index, entry in enumerate(entries):
        try:
            headline = parse_entry(entry, source=source, symbols=symbols)
        except Exception as exc:  # one odd entry must not lose the rest of the feed
            errors.append(f"entry {index}: {type(exc).__name__}: {exc}")
            continue
        if headline is None:
            errors.append(f"entry {index}: no title")
            continue
        if headline.id in seen:
            duplicates += 1
            continue
        seen.add(headline.id)
        items.append(headline)

    error: str | None = None
    if not items:
        if not content.strip():
            error = "empty document"
        elif bozo_exc is not None and not isinstance(bozo_exc, _BENIGN_BOZO):
            error = f"malformed feed: {bozo}"
        elif not version and not entries:
            error = "not an RSS/Atom feed"
    if error:
        errors.append(error)
    return ParseResult(
        items=items, errors=errors, bozo=bozo, error=error, duplicates=duplicates, version=version
    )


# --- `news` topic codec ------------------------------------------------------------------------


def headline_to_dict(h: Headline) -> dict[str, Any]:
    """JSON-ready form: ``published`` as ISO-8601 plus ``ts`` as epoch milliseconds (or null)."""
    return {
        "id": h.id,
        "source": h.source,
        "title": h.title,
        "link": h.link,
        "summary": h.summary,
        "published": h.published.isoformat() if h.published else None,
        "ts": round(h.published.timestamp() * 1000) if h.published else None,
        "sentiment": h.sentiment,
        "symbols": list(h.symbols),
    }


def encode_headline(h: Headline) -> tuple[bytes, bytes]:
    """(key, value) for the `news` topic: key = id, value = `headline_to_dict` as JSON."""
    return h.id.encode("utf-8"), orjson.dumps(headline_to_dict(h))


def decode_headline(value: bytes) -> Headline:
    """Inverse of `encode_headline` (value only). Raises ``ValueError`` on a malformed record."""
    obj = orjson.loads(value)
    if not isinstance(obj, dict):
        raise ValueError("headline record is not a JSON object")
    try:
        ts = obj.get("ts")
        return Headline(
            id=str(obj["id"]),
            source=str(obj["source"]),
            title=str(obj["title"]),
            link=obj.get("link"),
            summary=str(obj.get("summary") or ""),
            published=datetime.fromtimestamp(ts / 1000, tz=UTC) if isinstance(ts, int | float) else None,
            sentiment=float(obj.get("sentiment") or 0.0),
            symbols=tuple(str(s) for s in obj.get("symbols") or ()),
        )
    except (KeyError, TypeError) as exc:
        raise ValueError(f"malformed headline record: {exc}") from None


__all__ = [
    "Headline",
    "ParseResult",
    "decode_headline",
    "encode_headline",
    "headline_to_dict",
    "make_id",
    "parse_entry",
    "parse_feed",
    "title_from_description",
]
