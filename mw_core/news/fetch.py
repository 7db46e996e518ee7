"""Feed fetching (HTTP via httpx, or local files) and `collect`, the news pipeline entry point.

Contract:
- `fetch_feed` never raises for network, HTTP, size or file problems: it returns a `FetchResult`
  whose ``error`` says what went wrong (``"HTTP 404 Not Found"``, ``"timeout after 5s"``, ...).
  It sends a conditional GET (``If-None-Match`` / ``If-Modified-Since``) when validators are
  given, follows redirects, enforces a total deadline (not just per-read timeouts, so a server
  trickling bytes cannot hold us) and stops reading past `MAX_BYTES` (also after decompression).
  On errors and 304s the given validators are returned unchanged, so a cursor is never lost.
- Sources are ``http(s)://`` URLs, ``file://`` URLs or plain paths (the recorded/offline client
  used by ``mw news parse FILE`` and tests). Files get an ETag built from size + mtime, so the
  same cursor logic yields ``not_modified`` for an unchanged file.
- `collect` = fetch every source concurrently, then parse (off the event loop). A broken source
  yields a `SourceResult` with ``error`` set; the others are unaffected.
- Cursor format (JSON-friendly; the Dagster sensor stores it as its cursor)::

      {"https://example.com/feed": {"etag": "\\"abc\\"", "last_modified": "Mon, 05 Aug 2024 ..."}}

  Callers should persist `next_cursor(results)` only after the items were stored, otherwise a
  crash between the two would skip those items forever.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import unquote, urlsplit

import httpx

from mw_core import __version__
from mw_core.news.parse import Headline, parse_feed

MAX_BYTES = 5 * 1024 * 1024
DEFAULT_TIMEOUT_S = 10.0
DEFAULT_CONCURRENCY = 8
USER_AGENT = f"market-watch/{__version__} (+rss; conditional GET)"
ACCEPT = "application/rss+xml, application/atom+xml, application/xml;q=0.9, text/xml;q=0.9, */*;q=0.5"

Cursor = dict[str, dict[str, str | None]]


@dataclass(frozen=True, slots=True)
class FetchResult:
    """Outcome of fetching one source.

    Attributes:
        url: The source as requested (the cursor key).
        status: Final HTTP status (after redirects); ``None`` for files and transport errors.
        content: The body when new content was read, else ``None``.
        etag: Validator to send next time (new one, or the previous one when unchanged/failed).
        last_modified: Same for ``Last-Modified``.
        not_modified: The server (or file) says nothing changed since the given validators.
        error: Why no content could be read; ``None`` on success and on ``not_modified``.
        elapsed_ms: Wall time of the fetch.
    """

    url: str
    status: int | None
    content: bytes | None
    etag: str | None
    last_modified: str | None
    not_modified: bool = False
    error: str | None = None
    elapsed_ms: float = 0.0


@dataclass(frozen=True, slots=True)
class SourceResult:
    """Fetched-and-parsed outcome of one source, as used by the Dagster asset/sensor and the CLI.

    ``error`` is set when the source yielded nothing usable (fetch failed, or the document is
    not a readable feed); ``errors`` additionally lists skipped entries.
    """

    source: str
    items: list[Headline] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    not_modified: bool = False
    etag: str | None = None
    last_modified: str | None = None
    status: int | None = None
    error: str | None = None
    bozo: str | None = None
    duplicates: int = 0
    elapsed_ms: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None

    def cursor_entry(self) -> dict[str, str | None]:
        return {"etag": self.etag, "last_modified": self.last_modified}


def is_file_source(source: str) -> bool:
    """True for ``file://`` URLs and for anything without a URL scheme (a filesystem path)."""
    return source.startswith("file://") or "://" not in source


def _file_path(source: str) -> Path:
    if source.startswith("file://"):
        return Path(unquote(urlsplit(source).path))
    return Path(source).expanduser()


def display_source(source: str) -> str:
    """What `Headline.source` holds: the feed URL, or the file name for file sources."""
    return _file_path(source).name if is_file_source(source) else source


def _file_etag(size: int, mtime_ns: int) -> str:
    return f'"{size:x}-{mtime_ns:x}"'


def _read_file(path: Path, etag: str | None, max_bytes: int) -> tuple[bytes | None, str, str | None]:
    """(content or None if unchanged, new etag, error)."""
    st = path.stat()
    new_etag = _file_etag(st.st_size, st.st_mtime_ns)
    if etag is not None and etag == new_etag:
        return None, new_etag, None
    if st.st_size > max_bytes:
        return None, new_etag, f"file larger than {max_bytes} bytes"
    with path.open("rb") as fh:
        data = fh.read(max_bytes + 1)
    if len(data) > max_bytes:
        return None, new_etag, f"file larger than {max_bytes} bytes"
    return data, new_etag, None


async def _fetch_file(source: str, *, etag: str | None, max_bytes: int, started: float) -> FetchResult:
    new_etag: str | None
    try:
        path = _file_path(source)
        data, new_etag, error = await asyncio.to_thread(_read_file, path, etag, max_bytes)
    except ValueError as exc:  # e.g. a malformed file:// URL or a NUL in the path
        return FetchResult(
            url=source, status=None, content=None, etag=etag, last_modified=None,
            error=f"invalid path {source!r}: {exc}", elapsed_ms=(time.perf_counter() - started) * 1000,
        )  # fmt: skip
    except OSError as exc:
        return FetchResult(
            url=source, status=None, content=None, etag=etag, last_modified=None,
            error=f"cannot read {path}: {exc.strerror or type(exc).__name__}",
            elapsed_ms=(time.perf_counter() - started) * 1000,
        )  # fmt: skip
    if error is not None:
        data, new_etag = None, etag  # keep the old validator: the file was not consumed
    return FetchResult(
        url=source,
        status=None,
        content=data,
        etag=new_etag,
        last_modified=None,
        not_modified=data is None and error is None,
        error=error,
        elapsed_ms=(time.perf_counter() - started) * 1000,
    )


async def fetch_feed(
    client: httpx.AsyncClient,
    url: str,
    *,
    etag: str | None = None,
    last_modified: str | None = None,
    timeout: float = DEFAULT_TIMEOUT_S,
    max_bytes: int = MAX_BYTES,
) -> FetchResult:
    """Fetch one feed with a conditional GET (or read it from disk). Never raises for I/O errors.

    Args:
        client: Shared client (connection pooling); its own redirect/timeout defaults are overridden.
        url: ``http(s)://`` URL, ``file://`` URL or filesystem path.
        etag: ETag from the previous successful fetch (sent as ``If-None-Match``).
        last_modified: ``Last-Modified`` from the previous fetch (sent as ``If-Modified-Since``).
        timeout: Total deadline in seconds for connect + headers + body.
        max_bytes: Body size cap; larger responses become an error.

    Returns:
        A `FetchResult` (see module contract).
    """
    started = time.perf_counter()
    if is_file_source(url):
        return await _fetch_file(url, etag=etag, max_bytes=max_bytes, started=started)

    def failed(error: str, status: int | None = None) -> FetchResult:
        return FetchResult(
            url=url, status=status, content=None, etag=etag, last_modified=last_modified,
            error=error, elapsed_ms=(time.perf_counter() - started) * 1000,
        )  # fmt: skip

    try:
        scheme = urlsplit(url).scheme.lower()
    except ValueError as exc:
        return failed(f"invalid URL {url!r}: {exc}")
    if scheme not in ("http", "https"):
        return failed(f"unsupported URL scheme in {url!r}")
    headers = {"Accept": ACCEPT}
    if etag:
        headers["If-None-Match"] = etag
    if last_modified:
        headers["If-Modified-Since"] = last_modified
    try:
        async with (
            asyncio.timeout(timeout),
            client.stream("GET", url, headers=headers, follow_redirects=True, timeout=timeout) as resp,
        ):
            status = resp.status_code
            if status == 304:
                return FetchResult(
                    url=url,
                    status=status,
                    content=None,
                    etag=resp.headers.get("etag") or etag,
                    last_modified=resp.headers.get("last-modified") or last_modified,
                    not_modified=True,
                    elapsed_ms=(time.perf_counter() - started) * 1000,
                )
            if not 200 <= status < 300 or status in (204, 205):
                return failed(f"HTTP {status} {resp.reason_phrase}".rstrip(), status)
            declared = resp.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > max_bytes:
                return failed(f"response larger than {max_bytes} bytes (Content-Length {declared})", status)
            body = bytearray()
            async for chunk in resp.aiter_bytes():
                body += chunk
                if len(body) > max_bytes:
                    return failed(f"response larger than {max_bytes} bytes", status)
            return FetchResult(
                url=url,
                status=status,
                content=bytes(body),
                etag=resp.headers.get("etag"),
                last_modified=resp.headers.get("last-modified"),
                elapsed_ms=(time.perf_counter() - started) * 1000,
            )
    except (TimeoutError, httpx.TimeoutException):
        return failed(f"timeout after {timeout:g}s")
    except (httpx.HTTPError, httpx.InvalidURL, httpx.StreamError) as exc:
        return failed(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)


def new_client(
    *, timeout: float = DEFAULT_TIMEOUT_S, concurrency: int = DEFAULT_CONCURRENCY
) -> httpx.AsyncClient:
    """An `httpx.AsyncClient` configured for feed polling (UA, redirects, pool size)."""
    return httpx.AsyncClient(
        headers={"User-Agent": USER_AGENT},
        follow_redirects=True,
        timeout=timeout,
        limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
    )


async def fetch_all(
    urls: Sequence[str],
    cursor: Mapping[str, Mapping[str, str | None]] | None = None,
    *,
    client: httpx.AsyncClient | None = None,
    timeout: float = DEFAULT_TIMEOUT_S,
    concurrency: int = DEFAULT_CONCURRENCY,
    max_bytes: int = MAX_BYTES,
) -> list[FetchResult]:
    """Fetch every distinct URL concurrently (at most `concurrency` at a time), in input order.

    Args:
        urls: Sources (URLs or paths); duplicates are fetched once.
        cursor: Validators per source from the previous run (see module contract).
        client: Client to reuse; a temporary one is created (and closed) when omitted.
        timeout: Total deadline per source in seconds.
        concurrency: Maximum simultaneous fetches.
        max_bytes: Body size cap per source.
    """
    cursor = cursor or {}
    unique = list(dict.fromkeys(urls))
    semaphore = asyncio.Semaphore(max(1, concurrency))

    async def one(http: httpx.AsyncClient, url: str) -> FetchResult:
        state = cursor.get(url) or {}
        async with semaphore:
            return await fetch_feed(
                http, url, etag=state.get("etag"), last_modified=state.get("last_modified"),
                timeout=timeout, max_bytes=max_bytes,
            )  # fmt: skip

    if client is not None:
        return list(await asyncio.gather(*(one(client, u) for u in unique)))
    async with new_client(timeout=timeout, concurrency=concurrency) as own:
        return list(await asyncio.gather(*(one(own, u) for u in unique)))


def _to_source_result(fetched: FetchResult, symbols: Sequence[str]) -> SourceResult:
    common = SourceResult(
        source=fetched.url,
        etag=fetched.etag,
        last_modified=fetched.last_modified,
        status=fetched.status,
        elapsed_ms=fetched.elapsed_ms,
    )
    if fetched.error is not None:
        return replace(common, errors=[fetched.error], error=fetched.error)
    if fetched.not_modified or fetched.content is None:
        return replace(common, not_modified=True)
    p = parse_feed(fetched.content, source=display_source(fetched.url), symbols=symbols)
    return replace(
        common, items=p.items, errors=p.errors, error=p.error, bozo=p.bozo, duplicates=p.duplicates
    )


async def collect(
    sources: Sequence[str],
    *,
    symbols: Sequence[str],
    cursor: Mapping[str, Mapping[str, str | None]] | None = None,
    client: httpx.AsyncClient | None = None,
    timeout: float = DEFAULT_TIMEOUT_S,
    concurrency: int = DEFAULT_CONCURRENCY,
) -> list[SourceResult]:
    """Fetch and parse every source; one `SourceResult` per distinct source, in input order.

    Args:
        sources: Feed URLs and/or file paths (``Settings.rss_feeds``, or a file for the CLI).
        symbols: Configured symbols for tagging (``Settings.symbols``).
        cursor: Validators from the previous run (`next_cursor` of its results), or ``None``.
        client: Client to reuse (tests inject one); a temporary one is created when omitted.
        timeout: Total deadline per source in seconds.
        concurrency: Maximum simultaneous fetches.

    Example::

        results = await collect(settings.rss_feeds, symbols=settings.symbols, cursor=old_cursor)
        new_ids = await insert_headlines(pool, [h for r in results for h in r.items])
        old_cursor = next_cursor(results)  # persist only after the insert succeeded
    """
    fetched = await fetch_all(sources, cursor, client=client, timeout=timeout, concurrency=concurrency)
    symbols = tuple(symbols)
    # Parsing is CPU-bound (feedparser + VADER): keep the event loop responsive meanwhile.
    return [await asyncio.to_thread(_to_source_result, f, symbols) for f in fetched]


def next_cursor(results: Sequence[SourceResult]) -> Cursor:
    """The cursor to persist after `results` were stored: validators per source (empty ones omitted)."""
    return {r.source: r.cursor_entry() for r in results if r.etag is not None or r.last_modified is not None}
