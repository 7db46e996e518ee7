"""Local HTTP receivers for notifier tests (stdlib only, 127.0.0.1).

`Receiver` answers every POST according to a script, records it, and, given a `secret`, checks
our webhook's contract on each request: ``X-MW-Signature: sha256=<hex HMAC-SHA256 of the raw
body>`` and an ``Idempotency-Key`` header. It also serves as the endpoint of Apprise's
``json://`` and ``ntfy://`` (any path; a JSON reply).

Behaviour: `script` entries are consumed in order, then `default` answers: `Ok()` (200),
`Status(code, retry_after=None)` (e.g. 429 with ``Retry-After``, 500), `Stall(seconds)` (hold
the request longer than the client's timeout, then 200).

`accepted` counts 2xx answers per idempotency key (or per body for receivers without keys):
``duplicates()`` lists keys accepted more than once.
"""

from __future__ import annotations

import collections
import hashlib
import hmac
import json
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Ok:
    pass


@dataclass(frozen=True)
class Status:
    code: int
    retry_after: float | None = None


@dataclass(frozen=True)
class Stall:
    seconds: float


Behaviour = Ok | Status | Stall


@dataclass(frozen=True)
class Received:
    at: float  # time.monotonic() on arrival
    path: str
    headers: dict[str, str]
    body: bytes
    status: int
    signature_ok: bool | None  # None: receiver has no secret
    key: str | None

    def json(self) -> Any:
        return json.loads(self.body)


class Receiver:
    def __init__(self, *, secret: str | None = None) -> None:
        self.secret = secret
        self.script: collections.deque[Behaviour] = collections.deque()
        self.default: Behaviour = Ok()
        self.requests: list[Received] = []
        self.accepted: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                receiver._handle(self)

            def log_message(self, format: str, *args: Any) -> None:
                return

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Receiver:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _next(self) -> Behaviour:
        with self._lock:
            return self.script.popleft() if self.script else self.default

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        length = int(h.headers.get("Content-Length") or 0)
        body = h.rfile.read(length)
        headers = {k.lower(): v for k, v in h.headers.items()}
        signature_ok: bool | None = None
        if self.secret is not None:
            expected = "sha256=" + hmac.new(self.secret.encode(), body, hashlib.sha256).hexdigest()
            signature_ok = hmac.compare_digest(expected, headers.get("x-mw-signature", ""))
        key = headers.get("idempotency-key")
        behaviour = self._next()
        code = 200
        extra: dict[str, str] = {}
        if isinstance(behaviour, Stall):
            time.sleep(behaviour.seconds)
        elif isinstance(behaviour, Status):
            code = behaviour.code
            if behaviour.retry_after is not None:
                extra["Retry-After"] = f"{behaviour.retry_after:g}"
        if signature_ok is False or (self.secret is not None and not key):
            code = 401
        with self._lock:
            self.requests.append(Received(time.monotonic(), h.path, headers, body, code, signature_ok, key))
            if 200 <= code < 300:
                self.accepted[key or hashlib.sha256(body).hexdigest()] += 1
        reply = b'{"ok": true, "id": "1"}'
        try:
            h.send_response(code)
            for name, value in extra.items():
                h.send_header(name, value)
            h.send_header("Content-Type", "application/json")
            h.send_header("Content-Length", str(len(reply)))
            h.end_headers()
            h.wfile.write(reply)
        except OSError:
            pass  # the client gave up (timeout)

    def ok_requests(self) -> list[Received]:
        with self._lock:
            return [r for r in self.requests if 200 <= r.status < 300]

    def duplicates(self) -> list[str]:
        with self._lock:
            return [k for k, n in self.accepted.items() if n > 1]
