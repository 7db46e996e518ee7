"""What `mw up` / `mw status` tell the user about the outside world, and the first-tick probe.

Contract:
- `source_banners(meta)` returns one-line banners about the live sources, from the status meta
  that `Stack.meta()` writes: the price source (from the ingest's ``/healthz``) and the news
  feeds' reachability. Best effort: probes are short and never raise; an offline machine gets a
  hint (`mw up --replay sample`) instead of an error.
- Feed reachability is cached for a minute, as the status view refreshes often.
- `FirstTickProbe` measures the time from `up` to the first durable price row (the start-up
  target: UI answering + first tick durable < 20 s warm, < 40 s on first start).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlparse

import orjson

from mw_core.local.ports import port_open
from mw_core.local.probes import http_status

log = logging.getLogger(__name__)

_FEED_PROBES: dict[str, tuple[float, bool]] = {}
_FEED_PROBE_TTL_S = 60.0


def _feed_reachable(url: str) -> bool:
    """TCP reachability of a feed's host, cached for a minute."""
    now = time.monotonic()
    cached = _FEED_PROBES.get(url)
    if cached is not None and now - cached[0] < _FEED_PROBE_TTL_S:
        return cached[1]
    parsed = urlparse(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    ok = bool(parsed.hostname) and port_open(str(parsed.hostname), port, timeout=0.5)
    _FEED_PROBES[url] = (now, ok)
    return ok


def feed_banner(feeds: Sequence[str]) -> list[str]:
    """One banner for the news feeds: reachable or not (the rss sensor retries every minute)."""
    if not feeds:
        return []
    down = [f for f in feeds if not _feed_reachable(f)]
    if not down:
        return [f"news feeds: {len(feeds)} reachable"]
    host = urlparse(down[0]).hostname or down[0]
    return [
        f"news feeds: {len(down)} of {len(feeds)} unreachable (first: {host}) - offline? headlines stay "
        "empty; rss_poll_sensor retries every minute"
    ]


def source_banners(meta: dict[str, Any]) -> list[str]:
    """Banners about the live sources from status meta (`Stack.meta`): ingest /healthz, feeds."""
    return _price_banner(meta) + feed_banner([str(f) for f in meta.get("rss_feeds") or []])


def _health_json(body: bytes) -> dict[str, Any]:
    """A ``/healthz`` body as a dict ({} when it is not a JSON object)."""
    try:
        health = orjson.loads(body)
    except orjson.JSONDecodeError:
        return {}
    return health if isinstance(health, dict) else {}


def _price_banner(meta: dict[str, Any]) -> list[str]:
    url = meta.get("ingest_health")
    source = str(meta.get("price_source") or "Binance")
    if not url:
        return []
    answer = http_status(str(url), timeout=0.5)
    if answer is None:
        return [f"price source {source}: ingest not answering"]
    code, body = answer
    health = _health_json(body)
    status = str(health.get("status", code))
    if status == "ok":
        return [f"price source {source}: OK"]
    detail = ""
    for key in ("degraded", "error", "detail", "reason", "last_error", "message"):
        if health.get(key):
            detail = f" ({health[key]})"
            break
    hint = "" if meta.get("replay") else " - offline? `mw up --replay sample` replays a recorded day"
    return [f"price source {source}: {status}{detail}{hint}"]


def durable(health_body: bytes) -> bool:
    """True when a processor `/healthz` body shows a stored and committed batch."""
    health = _health_json(health_body)
    stored = health.get("stored") or 0
    return bool(stored) and health.get("last_commit_age_s") is not None


class FirstTickProbe:
    """Background thread: seconds from `started_at` until the processor made a tick durable.

    Reads the processor's ``/healthz`` (`process_health`): a tick is durable once the processor
    stored a batch and committed its offsets (it writes PostgreSQL before committing Kafka).
    Replaying a day that is already in the database still counts, as the idempotent write is
    durable too.
    """

    def __init__(self, process_health: str, started_at: datetime, *, timeout: float = 300.0) -> None:
        self.url = process_health
        self.started_at = started_at
        self.timeout = timeout
        self.seconds: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="first-tick-probe", daemon=True)

    @property
    def started(self) -> bool:
        return self._thread.ident is not None

    def start(self) -> FirstTickProbe:
        if not self.started:
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        deadline = time.monotonic() + self.timeout
        while not self._stop.is_set() and time.monotonic() < deadline:
            answer = http_status(self.url, timeout=1.0)
            if answer is not None and durable(answer[1]):
                self.seconds = round((datetime.now(UTC) - self.started_at).total_seconds(), 2)
                log.info("first tick durable %.1fs after `mw up`", self.seconds)
                return
            self._stop.wait(0.25)
