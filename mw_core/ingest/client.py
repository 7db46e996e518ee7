"""Binance combined-stream websocket client that never gives up and never fakes data.

Contract:
- `BinanceStreamClient.run(handler)` connects to ``{ws_url}/stream?streams=<sym>@miniTicker/...``
  and hands every frame to `handler` until `stop()`: ticks (de-duplicated by ``(symbol, E)``),
  bad frames (raw bytes + `BadMessage`), and gaps (see below). The handler's coroutines are
  awaited, so a slow handler pushes back on the socket (and on the server through TCP).
- Pings from the server are answered by websockets; the client also sends keepalive pings.
- Any error (refused, DNS, TLS, protocol, abrupt close, keepalive timeout) -> reconnect with
  exponential backoff and FULL jitter (``uniform(0, min(cap, base * 2**failures))``, the wait
  `mw_core.adapters.retry.jittered_delay` gives after attempt ``failures + 1``), capped at
  ``max_backoff_s``. ``mw_ingest_consecutive_failures`` counts attempts since the last connection
  that delivered a frame (the circuit-breaker state); ``mw_ingest_reconnects_total{reason}``
  counts reconnects. An unreachable endpoint logs one WARNING line per attempt and is retried
  forever (offline machines: use `mw replay`).
- Silence watchdog: no frame for ``silence_timeout_s`` -> the connection is treated as half-open
  and replaced.
- Rollover: ``rollover_s`` after opening, and at once on ``serverShutdown``, a NEW connection is
  opened first; the old one is closed after ``overlap_s``. Frames seen on both are dropped by the
  ``(symbol, E)`` de-duplication (a bounded per-symbol set of recent event times).
- Gaps: on every connection after the first, the first frame of each symbol is compared with the
  newest ``E`` seen before; when a 1-minute kline closed strictly in between, the handler's
  ``on_gap(symbol, after_ms, before_ms)`` is awaited so the REST backfill can fill it. The upper
  bound is that first ``E`` on the new connection (exchange time), not the local clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from prometheus_client import Counter, Gauge
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from mw_core.adapters.retry import jittered_delay
from mw_core.markets.codec import BadMessage
from mw_core.markets.frames import ServerShutdown, SubscriptionAck, parse_frame
from mw_core.models import Tick

log = logging.getLogger(__name__)

RECONNECTS = Counter("mw_ingest_reconnects_total", "Websocket reconnects and rollovers", ["reason"])
CONSECUTIVE_FAILURES = Gauge(
    "mw_ingest_consecutive_failures",
    "Connection attempts since the last connection that delivered data (circuit-breaker state)",
)
CONNECTED = Gauge("mw_ingest_ws_connected", "Open websocket connections to Binance")
DUPLICATES = Counter("mw_ingest_duplicates_total", "Frames dropped as duplicates of (symbol, E)")

MINUTE_MS = 60_000
OFFLINE_HINT = "offline? use `mw replay`"


class StreamHandler(Protocol):
    """What the client feeds; every method may block to apply backpressure."""

    async def on_tick(self, tick: Tick) -> None: ...

    async def on_bad_frame(self, raw: bytes, error: BadMessage) -> None: ...

    async def on_gap(self, symbol: str, after_ms: int, before_ms: int) -> None: ...


def stream_url(ws_url: str, symbols: Sequence[str]) -> str:
    """``wss://stream.binance.com:9443`` + symbols -> the combined-stream URL."""
    streams = "/".join(f"{s.lower()}@miniTicker" for s in symbols)
    return f"{ws_url.rstrip('/')}/stream?streams={streams}"


def kline_closed_between(after_ms: int, before_ms: int) -> bool:
    """True when a 1m kline close time (``k*60000 + 59999``) lies strictly inside the interval."""
    first_close = (after_ms // MINUTE_MS) * MINUTE_MS + MINUTE_MS - 1
    if first_close <= after_ms:
        first_close += MINUTE_MS
    return first_close < before_ms


class Deduper:
    """Recent ``(symbol, E)`` keys, bounded per symbol (oldest forgotten first)."""

    def __init__(self, per_symbol: int = 4096) -> None:
        self.per_symbol = per_symbol
        self._order: dict[str, deque[int]] = {}
        self._seen: dict[str, set[int]] = {}
        self.newest: dict[str, int] = {}

    def accept(self, symbol: str, ts: int) -> bool:
        """Record the key; False when it was seen recently (a duplicate)."""
        seen = self._seen.setdefault(symbol, set())
        if ts in seen:
            return False
        order = self._order.setdefault(symbol, deque())
        seen.add(ts)
        order.append(ts)
        if len(order) > self.per_symbol:
            seen.discard(order.popleft())
        if ts > self.newest.get(symbol, ts - 1):
            self.newest[symbol] = ts
        return True


@dataclass(eq=False)
class _Connection:
    ws: ClientConnection
    cid: int
    follows_another: bool  # a connection existed before: check for gaps
    opened_at: float = field(default_factory=time.monotonic)
    first_seen: set[str] = field(default_factory=set)
    frames: int = 0
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    shutdown: asyncio.Event = field(default_factory=asyncio.Event)
    end_reason: str = ""
    reader: asyncio.Task[None] | None = None

    def end(self, reason: str) -> None:
        if not self.ended.is_set():
            self.end_reason = reason
            self.ended.set()


@dataclass
class ClientStats:
    connections: int = 0
    reconnects: int = 0
    rollovers: int = 0
    consecutive_failures: int = 0
    duplicates: int = 0
    frames: int = 0
    last_error: str | None = None
    last_frame_at: float | None = None
    reconnect_reasons: dict[str, int] = field(default_factory=dict)


class BinanceStreamClient:
    """The live Binance websocket client (`mw_core.replay.server` speaks the same protocol).

    Args:
        ws_url: Base URL, e.g. ``wss://stream.binance.com:9443`` or ``ws://127.0.0.1:PORT``.
        symbols: Upper-case symbols; one ``<symbol>@miniTicker`` stream each.
        silence_timeout_s: Reconnect when no frame arrived for this long.
        rollover_s: Open a replacement connection after this long.
        max_backoff_s: Cap of the reconnect backoff.
        base_backoff_s: First backoff ceiling (doubles per consecutive failure).
        overlap_s: How long old and new connection both run during a rollover.
        open_timeout_s: Handshake timeout.
        max_price: Prices above this are bad frames.
    """

    def __init__(
        self,
        ws_url: str,
        symbols: Sequence[str],
        *,
        silence_timeout_s: float = 30.0,
        rollover_s: float = 23 * 3600.0,
        max_backoff_s: float = 60.0,
        base_backoff_s: float = 0.5,
        overlap_s: float = 1.0,
        open_timeout_s: float = 10.0,
        max_price: float = 1e9,
        dedup_per_symbol: int = 4096,
    ) -> None:
        if not symbols:
            raise ValueError("at least one symbol is required")
        self.ws_url = ws_url
        self.url = stream_url(ws_url, symbols)
        self.symbols = list(symbols)
        self.silence_timeout_s = silence_timeout_s
        self.rollover_s = rollover_s
        self.max_backoff_s = max_backoff_s
        self.base_backoff_s = base_backoff_s
        self.overlap_s = overlap_s
        self.open_timeout_s = open_timeout_s
        self.max_price = max_price
        self.dedup = Deduper(dedup_per_symbol)
        self.stats = ClientStats()
        self._ids = itertools.count(1)
        self._open: set[_Connection] = set()
        self._retiring: set[asyncio.Task[None]] = set()
        self._stopping = asyncio.Event()
        self._had_connection = False

    # --- public ----------------------------------------------------------------------------------
    @property
    def connected(self) -> bool:
        return any(not c.ended.is_set() for c in self._open)

    def stop(self) -> None:
        """Ask `run` to close its connections and return."""
        self._stopping.set()

    async def run(self, handler: StreamHandler) -> None:
        """Stream into `handler` until `stop()`; reconnects forever, never raises on network errors."""
        self._stopping.clear()
        current: _Connection | None = None
        try:
            while not self._stopping.is_set():
                if current is None:
                    current = await self._connect(handler)
                    if current is None:
                        break
                reason = await self._wait_for_turn(current)
                if reason == "stop":
                    break
                if reason in ("rollover", "server_shutdown"):
                    self._count_reconnect(reason)
                    self.stats.rollovers += 1
                    log.info(
                        "websocket %s: opening a new connection before closing connection %d",
                        reason,
                        current.cid,
                    )
                    new = await self._connect(handler)
                    if new is None:
                        break
                    self._retire(current, delay_s=self.overlap_s)
                    current = new
                    continue
                # The connection failed (error, close, silence).
                self._count_reconnect(reason)
                self._retire(current, delay_s=0.0)
                if current.frames == 0:
                    self._failed(current.end_reason)
                log.warning(
                    "websocket connection %d lost (%s) after %d frames; reconnecting",
                    current.cid,
                    current.end_reason,
                    current.frames,
                )
                current = None
                await self._sleep(
                    jittered_delay(
                        self.stats.consecutive_failures + 1,
                        base_s=self.base_backoff_s,
                        cap_s=self.max_backoff_s,
                    )
                )
        finally:
            await self._close_all()

    # --- connection management ----------------------------------------------------------------------
    def _count_reconnect(self, reason: str) -> None:
        self.stats.reconnects += 1
        self.stats.reconnect_reasons[reason] = self.stats.reconnect_reasons.get(reason, 0) + 1
        RECONNECTS.labels(reason=reason).inc()

    def _failed(self, error: str) -> None:
        self.stats.consecutive_failures += 1
        self.stats.last_error = error
        CONSECUTIVE_FAILURES.set(self.stats.consecutive_failures)

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    async def _connect(self, handler: StreamHandler) -> _Connection | None:
        """Open a connection (retrying with backoff) and start its reader; None when stopping."""
        while not self._stopping.is_set():
            try:
                ws = await connect(
                    self.url,
                    open_timeout=self.open_timeout_s,
                    ping_interval=20,
                    ping_timeout=20,
                    close_timeout=2,
                    max_size=2**20,
                    compression=None,
                )
            except Exception as exc:  # every failure is retried; the reason is logged
                reason = _describe(exc)
                self._failed(reason)
                delay = jittered_delay(
                    self.stats.consecutive_failures + 1,
                    base_s=self.base_backoff_s,
                    cap_s=self.max_backoff_s,
                )
                log.warning(
                    "Binance unreachable at %s: %s; retrying in %.1fs (%s)",
                    self.url,
                    reason,
                    delay,
                    OFFLINE_HINT,
                )
                await self._sleep(delay)
                continue
            conn = _Connection(ws=ws, cid=next(self._ids), follows_another=self._had_connection)
            self._had_connection = True
            self.stats.connections += 1
            self._open.add(conn)
            CONNECTED.set(len(self._open))
            conn.reader = asyncio.create_task(self._read(conn, handler), name=f"binance-ws-{conn.cid}")
            log.info("websocket connection %d open: %s", conn.cid, self.url)
            return conn
        return None

    async def _wait_for_turn(self, conn: _Connection) -> str:
        """Wait until the connection ends, must roll over, or the client stops; return why."""
        waits = {
            asyncio.ensure_future(conn.ended.wait()): "ended",
            asyncio.ensure_future(conn.shutdown.wait()): "server_shutdown",
            asyncio.ensure_future(self._stopping.wait()): "stop",
        }
        timeout = max(0.0, conn.opened_at + self.rollover_s - time.monotonic())
        try:
            done, _ = await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for fut in waits:
                fut.cancel()
        if self._stopping.is_set():
            return "stop"
        if conn.ended.is_set():
            return conn.end_reason.partition(":")[0]
        if conn.shutdown.is_set():
            return "server_shutdown"
        return "rollover" if not done else next(waits[f] for f in done)

    def _retire(self, conn: _Connection, *, delay_s: float) -> None:
        task = asyncio.create_task(self._close_later(conn, delay_s), name=f"binance-ws-retire-{conn.cid}")
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def _close_later(self, conn: _Connection, delay_s: float) -> None:
        if delay_s > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(conn.ended.wait(), delay_s)
        await self._close(conn)

    @staticmethod
    async def _close_socket(conn: _Connection, timeout_s: float) -> None:
        """Close handshake if the peer cooperates, else drop the TCP connection.

        A peer can only complete the handshake if we read its close frame; while our receive buffer
        is full (backpressure) we cannot, so the transport is aborted after `timeout_s`.
        """
        with contextlib.suppress(Exception):
            await asyncio.wait_for(conn.ws.close(), timeout_s)
        conn.ws.transport.abort()

    async def _close(self, conn: _Connection) -> None:
        conn.end(conn.end_reason or "closed by client")
        await self._close_socket(conn, 3.0)
        if conn.reader is not None:
            # The reader may be parked in the handler (backpressure): let it finish that frame.
            try:
                await asyncio.wait_for(asyncio.shield(conn.reader), 5.0)
            except (TimeoutError, asyncio.CancelledError):
                conn.reader.cancel()
        self._open.discard(conn)
        CONNECTED.set(len(self._open))

    async def _close_all(self) -> None:
        for task in list(self._retiring):
            task.cancel()
        for conn in list(self._open):
            conn.end("client stopped")
            if conn.reader is not None:
                conn.reader.cancel()
            await self._close_socket(conn, 1.0)
            if conn.reader is not None:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await conn.reader
        self._open.clear()
        CONNECTED.set(0)

    # --- reading -------------------------------------------------------------------------------------
    async def _read(self, conn: _Connection, handler: StreamHandler) -> None:
        ws = conn.ws
        try:
            while True:
                try:
                    message = await asyncio.wait_for(ws.recv(decode=False), self.silence_timeout_s)
                except TimeoutError:
                    conn.end(f"silence: no frame for {self.silence_timeout_s:g}s")
                    return
                except ConnectionClosed as exc:
                    conn.end(f"closed: {_describe(exc)}")
                    return
                await self._on_message(conn, message, handler)
        except asyncio.CancelledError:
            conn.end(conn.end_reason or "cancelled")
            raise
        except Exception as exc:  # a handler failure must not kill ingest silently
            log.exception("websocket reader %d failed", conn.cid)
            conn.end(f"error: {_describe(exc)}")

    async def _on_message(self, conn: _Connection, raw: bytes, handler: StreamHandler) -> None:
        now = time.time()
        conn.frames += 1
        self.stats.frames += 1
        self.stats.last_frame_at = now
        if self.stats.consecutive_failures:
            self.stats.consecutive_failures = 0
            CONSECUTIVE_FAILURES.set(0)
        try:
            frame = parse_frame(raw, now_ms=int(now * 1000), max_price=self.max_price)
        except BadMessage as exc:
            await handler.on_bad_frame(raw, exc)
            return
        if isinstance(frame, ServerShutdown):
            log.info("serverShutdown on connection %d (E=%d): rolling over", conn.cid, frame.ts)
            conn.shutdown.set()
            return
        if isinstance(frame, SubscriptionAck):
            log.debug("subscription ack %s on connection %d", frame.id, conn.cid)
            return
        tick = frame
        symbol = tick.symbol
        if conn.follows_another and symbol not in conn.first_seen:
            conn.first_seen.add(symbol)
            last = self.dedup.newest.get(symbol)
            if last is not None and kline_closed_between(last, tick.ts):
                await handler.on_gap(symbol, last, tick.ts)
        if not self.dedup.accept(symbol, tick.ts):
            self.stats.duplicates += 1
            DUPLICATES.inc()
            return
        await handler.on_tick(tick)


def _describe(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:200]


__all__ = [
    "CONSECUTIVE_FAILURES",
    "RECONNECTS",
    "BinanceStreamClient",
    "ClientStats",
    "Deduper",
    "StreamHandler",
    "kline_closed_between",
    "stream_url",
]
