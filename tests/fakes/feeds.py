"""A local RSS/Atom feed server for tests (stdlib only, 127.0.0.1, random port).

Routes are registered per path and can be changed while the server runs:

- `Feed` -- a document served with ``ETag`` and/or ``Last-Modified``; answers ``304 Not Modified``
  to a matching ``If-None-Match`` (preferred, RFC 9110) or ``If-Modified-Since``. Changing its body
  with `FeedServer.set_body` yields a new ETag / Last-Modified. Optional gzip encoding and an
  omitted ``Content-Length`` (chunked-like streaming until close).
- `Status` -- a bare status code (404, 500, ...).
- `Redirect` -- a 302/301 to another path.
- `Slow` -- waits before answering (headers included), or trickles the body byte by byte.

Every request is recorded (`requests`: method, path, headers) so tests can assert on the
conditional headers that were really sent. Waits are interruptible: `stop()` returns at once.
"""

from __future__ import annotations

import gzip
import hashlib
import threading
import time
from dataclasses import dataclass, field
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType

from tests.fakes.http import serve, shut


@dataclass
class Feed:
    body: bytes
    content_type: str = "application/rss+xml; charset=utf-8"
    etag: bool = True
    last_modified: bool = True
    gzip: bool = False
    send_length: bool = True
    version: int = 0
    modified_at: float = field(default_factory=lambda: float(int(time.time())) - 60)

    @property
    def etag_value(self) -> str:
        return '"' + hashlib.sha256(self.body).hexdigest()[:16] + f'-{self.version}"'

    @property
    def last_modified_value(self) -> str:
        return formatdate(self.modified_at, usegmt=True)


@dataclass(frozen=True)
class Status:
    code: int
    body: bytes = b"not here"


@dataclass(frozen=True)
class Redirect:
    to: str
    code: int = 302


@dataclass(frozen=True)
class Slow:
    """Sleep `delay_s` before the headers; or, with `trickle_s`, send the body one byte per step."""

    body: bytes
    delay_s: float = 0.0
    trickle_s: float = 0.0


Route = Feed | Status | Redirect | Slow


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    headers: dict[str, str]


class FeedServer:
    """``with FeedServer() as server: server.add("/rss.xml", Feed(body)); server.url("/rss.xml")``."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.routes: dict[str, Route] = {}
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._httpd = ThreadingHTTPServer((host, 0), self._handler_class())
        self._httpd.daemon_threads = True
        self._httpd.block_on_close = False
        self._thread: threading.Thread | None = None

    # --- lifecycle ---------------------------------------------------------------------------
    def start(self) -> FeedServer:
        self._thread = serve(self._httpd, name="feed-server", poll_interval=0.05)
        return self

    def stop(self) -> None:
        self._stopping.set()
        shut(self._httpd, self._thread)

    def __enter__(self) -> FeedServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # --- routes ------------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    def url(self, path: str) -> str:
        return self.base_url + path

    def add(self, path: str, route: Route) -> str:
        with self._lock:
            self.routes[path] = route
        return self.url(path)

    def set_body(self, path: str, body: bytes) -> None:
        """Publish new content on a `Feed` route: new ETag and a later Last-Modified."""
        with self._lock:
            feed = self.routes[path]
            assert isinstance(feed, Feed)
            feed.body = body
            feed.version += 1
            feed.modified_at += 60

    def requests_to(self, path: str) -> list[Request]:
        with self._lock:
            return [r for r in self.requests if r.path == path]

    # --- HTTP --------------------------------------------------------------------------------
    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                with server._lock:
                    server.requests.append(
                        Request("GET", path, {k.lower(): v for k, v in self.headers.items()})
                    )
                    route = server.routes.get(path)
                if route is None:
                    self._send(404, b"no such route")
                elif isinstance(route, Status):
                    self._send(route.code, route.body)
                elif isinstance(route, Redirect):
                    self._send(route.code, b"", {"Location": route.to})
                elif isinstance(route, Slow):
                    self._slow(route)
                else:
                    self._feed(route)

            def _send(self, code: int, body: bytes, headers: dict[str, str] | None = None) -> None:
                self.send_response(code)
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _feed(self, feed: Feed) -> None:
                with server._lock:
                    body, etag, modified = feed.body, feed.etag_value, feed.last_modified_value
                validators: dict[str, str] = {}
                if feed.etag:
                    validators["ETag"] = etag
                if feed.last_modified:
                    validators["Last-Modified"] = modified
                inm = self.headers.get("If-None-Match")
                ims = self.headers.get("If-Modified-Since")
                if (feed.etag and inm is not None and etag in [t.strip() for t in inm.split(",")]) or (
                    inm is None and feed.last_modified and ims == modified
                ):
                    self.send_response(304)
                    for name, value in validators.items():
                        self.send_header(name, value)
                    self.end_headers()
                    return
                headers = {"Content-Type": feed.content_type, **validators}
                if feed.gzip:
                    body = gzip.compress(body)
                    headers["Content-Encoding"] = "gzip"
                if feed.send_length:
                    self._send(200, body, headers)
                    return
                # No Content-Length: the body ends when the connection closes.
                self.close_connection = True
                self.send_response(200)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(body)

            def _slow(self, slow: Slow) -> None:
                if server._stopping.wait(slow.delay_s):
                    return
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", "application/rss+xml")
                    self.send_header("Content-Length", str(len(slow.body)))
                    self.end_headers()
                    for i in range(len(slow.body)):
                        if slow.trickle_s and server._stopping.wait(slow.trickle_s):
                            return
                        self.wfile.write(slow.body[i : i + 1])
                        self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up, as the test intends

        return Handler
