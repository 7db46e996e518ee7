"""A local Binance-protocol server replaying recorded 1-minute klines (powers `mw replay`).

Contract:
- One port on 127.0.0.1 serves both protocols: websocket upgrades on ``/stream?streams=a/b``
  (combined-stream envelopes, only the requested streams; ``SUBSCRIBE`` / ``UNSUBSCRIBE`` /
  ``LIST_SUBSCRIPTIONS`` requests work too) and ``/ws/<stream>`` (raw payloads), and plain HTTP
  ``GET /api/v3/klines`` (Binance JSON array rows), ``/api/v3/ping`` and ``/api/v3/time`` through
  websockets' ``process_request`` hook.
- Replay: one ``24hrMiniTicker`` per symbol per kline minute, ``E`` = kline close time, ``c`` =
  close, ``o/h/l/v/q`` from the kline; the klines of all files are merged in ``E`` order (ties by
  symbol). ``speed="max"`` sends as fast as the slowest client reads (websocket write
  backpressure); a float replays at that multiple of real time. With ``loop=True`` the timeline
  repeats forever, shifted by its span each time so ``E`` keeps increasing.
- One shared cursor: every connected client receives the frames at the cursor (a broadcast, like
  the exchange); while no client listens the cursor waits, so a reconnecting client continues
  where the stream left. Frames written to a connection that died are lost, as on the exchange;
  the REST endpoint serves the full recorded history (of every loop started so far) so the client's
  backfill can fill that gap.
- Wire formats (payloads, REST rows, errors) are in `mw_core.replay.wire`.
- Fault injection lives outside shipped code: subclasses (``tests/fakes/binance.py``) override
  `on_connect`, `after_send` and `handle_rest`, and use `Session.abort` / `Session.freeze` /
  `Session.send_raw` / `BinanceServer.skip`.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import itertools
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Self
from urllib.parse import parse_qs, urlsplit

import orjson
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.protocol import State

from mw_core.replay.klines import Kline, KlineFile, read_sources
from mw_core.replay.wire import RestResponse, kline_rest_row, mini_ticker_event, parse_speed, stream_name

__all__ = ["BinanceServer", "Session"]

log = logging.getLogger(__name__)

MAX_LIMIT = 1000
DEFAULT_LIMIT = 500


class Session:
    """One websocket connection to the server."""

    def __init__(self, server: BinanceServer, ws: ServerConnection, sid: int, *, combined: bool) -> None:
        self.server = server
        self.ws = ws
        self.id = sid
        self.combined = combined
        self.streams: set[str] = set()  # lower-case stream names
        self.sent = 0  # market-data frames sent on this connection
        self.frozen = False
        self.opened_at = time.monotonic()

    @property
    def listening(self) -> bool:
        """Open, subscribed and not frozen: the pump sends to it (and waits for it)."""
        return not self.frozen and self.ws.state is State.OPEN and bool(self.streams)

    def wants(self, stream: str) -> bool:
        return stream.lower() in self.streams

    async def send_event(self, stream: str, event: Mapping[str, Any]) -> None:
        payload = {"stream": stream, "data": event} if self.combined else event
        await self.ws.send(orjson.dumps(payload).decode())

    async def send_raw(self, message: str | bytes) -> None:
        """Send any text (str) or binary (bytes) message, e.g. garbage or ``serverShutdown``."""
        await self.ws.send(message)

    def abort(self) -> None:
        """Drop the TCP connection without a close handshake (a crash or network cut)."""
        self.frozen = True  # the state turns CLOSED a loop iteration later; send nothing meanwhile
        self.ws.transport.abort()
        self.server.notify()

    def freeze(self) -> None:
        """Stop sending market data but keep the connection open (a half-open connection)."""
        self.frozen = True
        self.server.notify()

    async def close(self, code: int = 1001, reason: str = "") -> None:
        await self.ws.close(code, reason)


class BinanceServer:
    """Binance websocket + REST klines on one local port, replaying `klines`.

    Args:
        klines: Recorded 1-minute klines of any number of symbols.
        speed: ``"max"`` (or None) for backpressure-paced replay, or a real-time multiplier.
        loop: Repeat the timeline forever (demos), shifting ``E`` by the span each loop.
        host: Bind address (local only).
        port: 0 for a free port.
        ping_interval: Keepalive pings to clients (like Binance's); None disables them.
    """

    def __init__(
        self,
        klines: Iterable[Kline],
        *,
        speed: str | float | None = "max",
        loop: bool = False,
        host: str = "127.0.0.1",
        port: int = 0,
        ping_interval: float | None = 20.0,
    ) -> None:
        self.speed = parse_speed(speed)
        self.loop = loop
        self.host = host
        self.port = port
        self.ping_interval = ping_interval
        self.files: list[KlineFile] = []
        by_symbol: dict[str, dict[int, Kline]] = {}
        for k in klines:
            by_symbol.setdefault(k.symbol, {})[k.open_time] = k
        self._by_symbol = {s: [rows[t] for t in sorted(rows)] for s, rows in by_symbol.items()}
        self._open_times = {s: [k.open_time for k in rows] for s, rows in self._by_symbol.items()}
        self._timeline = sorted(
            itertools.chain.from_iterable(self._by_symbol.values()), key=lambda k: (k.close_time, k.symbol)
        )
        if self._timeline:
            first = min(k.open_time for k in self._timeline)
            last = max(k.close_time for k in self._timeline)
            self.span_ms = last + 1 - first
        else:
            self.span_ms = 0
        self._cursor = 0
        self.frames_sent = 0  # websocket market-data messages sent (all connections)
        self.connections_total = 0
        self.max_concurrent = 0
        self.sessions: set[Session] = set()
        self._sids = itertools.count(1)
        self._changed = asyncio.Event()
        self._done = asyncio.Event()
        self._server: Server | None = None
        self._pump_task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    @classmethod
    def from_sources(cls, sources: Sequence[str | Path], **options: Any) -> BinanceServer:
        """Build from kline dumps (`mw_core.replay.klines.resolve_sources` arguments, e.g. ``["sample"]``)."""
        files = read_sources(sources)
        server = cls(itertools.chain.from_iterable(f.klines for f in files), **options)
        server.files = files
        return server

    # --- introspection ---------------------------------------------------------------------------
    @property
    def symbols(self) -> list[str]:
        return sorted(self._by_symbol)

    @property
    def total_frames(self) -> int:
        """Frames in one pass of the timeline."""
        return len(self._timeline)

    @property
    def position(self) -> int:
        """Index of the next frame in the (looped) timeline."""
        return self._cursor

    @property
    def bad_rows(self) -> int:
        return sum(len(f.errors) for f in self.files)

    @property
    def base_url(self) -> str:
        """``ws://127.0.0.1:PORT`` (after `start`)."""
        return f"ws://{self.host}:{self.port}"

    @property
    def rest_url(self) -> str:
        """``http://127.0.0.1:PORT`` (after `start`)."""
        return f"http://{self.host}:{self.port}"

    def frame_at(self, index: int) -> tuple[Kline, int]:
        """(kline, shift_ms) of timeline frame `index`."""
        loop_no, i = divmod(index, len(self._timeline))
        return self._timeline[i], loop_no * self.span_ms

    # --- lifecycle ---------------------------------------------------------------------------------
    async def start(self) -> str:
        """Bind, start the replay pump, return the websocket base URL."""
        self._server = await serve(
            self._handle_ws,
            self.host,
            self.port,
            process_request=self._process_request,
            ping_interval=self.ping_interval,
            ping_timeout=self.ping_interval,
            close_timeout=2,
            server_header="mw-binance-replay",
            logger=logging.getLogger("mw_core.replay.server.ws"),
        )
        self.port = int(self._server.sockets[0].getsockname()[1])
        self._pump_task = asyncio.create_task(self._pump(), name="binance-replay-pump")
        log.info(
            "binance replay server on %s: %d frames, %d symbols, speed=%s loop=%s",
            self.base_url,
            self.total_frames,
            len(self._by_symbol),
            "max" if self.speed is None else self.speed,
            self.loop,
        )
        return self.base_url

    async def wait_done(self) -> None:
        """Wait until every frame was sent once (never returns with ``loop=True``).

        Bound it with ``asyncio.timeout``.
        """
        await self._done.wait()

    @property
    def done(self) -> bool:
        return self._done.is_set()

    async def stop(self) -> None:
        """Close every connection (1001 going away) and the listening socket."""
        for task in [self._pump_task, *self._tasks]:
            if task is not None:
                task.cancel()
        for task in [self._pump_task, *self._tasks]:
            if task is not None:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        self._pump_task = None
        if self._server is not None:
            self._server.close()
            try:
                await asyncio.wait_for(asyncio.shield(self._server.wait_closed()), 3.0)
            except TimeoutError:
                # Clients that stopped reading cannot receive our close frame: drop them.
                for session in list(self.sessions):
                    session.ws.transport.abort()
                await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def spawn(self, coro: Any) -> asyncio.Task[Any]:
        """Run a helper coroutine owned by the server (cancelled by `stop`)."""
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def notify(self) -> None:
        """Wake the pump after the set of listening sessions changed."""
        self._changed.set()

    def skip(self, frames: int) -> None:
        """Advance the cursor without sending (events the exchange published nobody received)."""
        self._cursor += frames

    async def ping_clients(self, *, pong_timeout_s: float = 5.0) -> list[float]:
        """Ping every open connection; return the pong latencies (seconds) of those that answered."""
        latencies: list[float] = []
        for session in list(self.sessions):
            with contextlib.suppress(ConnectionClosed, TimeoutError):
                waiter = await session.ws.ping()
                latencies.append(await asyncio.wait_for(waiter, pong_timeout_s))
        return latencies

    # --- hooks for fault injection -------------------------------------------------------------------
    async def on_connect(self, session: Session) -> None:
        """Called once a websocket session is registered."""

    async def after_send(self, session: Session, event: Mapping[str, Any]) -> None:
        """Called after each market-data frame sent to `session` (``session.sent`` is updated)."""

    async def handle_rest(self, path: str, params: Mapping[str, str]) -> RestResponse:
        """Answer one REST request (override to inject 429 / 5xx)."""
        if path == "/api/v3/ping":
            return RestResponse.json(200, {})
        if path == "/api/v3/time":
            return RestResponse.json(200, {"serverTime": int(time.time() * 1000)})
        if path == "/api/v3/klines":
            return self.klines_response(params)
        return RestResponse.error(404, -1000, f"unknown endpoint {path}")

    # --- REST ------------------------------------------------------------------------------------------
    def _virtual_open(self, symbol: str, j: int) -> int:
        opens = self._open_times[symbol]
        loop_no, i = divmod(j, len(opens))
        return opens[i] + loop_no * self.span_ms

    def _first_at_or_after(self, symbol: str, t: int) -> int:
        opens = self._open_times[symbol]
        n = len(opens)
        loop_no = max(0, (t - opens[0]) // self.span_ms) if self.loop else 0
        i = bisect.bisect_left(opens, t - loop_no * self.span_ms)
        return loop_no * n + i

    def _last_at_or_before(self, symbol: str, t: int) -> int:
        opens = self._open_times[symbol]
        n = len(opens)
        loop_no = max(0, (t - opens[0]) // self.span_ms) if self.loop else 0
        i = bisect.bisect_right(opens, t - loop_no * self.span_ms) - 1
        return loop_no * n + i

    def klines_rows(
        self, symbol: str, *, start: int | None = None, end: int | None = None, limit: int = DEFAULT_LIMIT
    ) -> list[list[Any]]:
        """Binance ``GET /api/v3/klines`` semantics for 1m klines over the replayed history."""
        rows = self._by_symbol[symbol]
        n = len(rows)
        # In loop mode the history reaches to the end of the loop being replayed now.
        loops = (self._cursor // max(1, len(self._timeline)) + 1) if self.loop else 1
        j_max = loops * n  # exclusive
        if start is not None:
            j0 = self._first_at_or_after(symbol, start)
        elif end is not None:
            j0 = min(self._last_at_or_before(symbol, end), j_max - 1) - limit + 1
        else:
            j0 = j_max - limit
        out: list[list[Any]] = []
        j = max(0, j0)
        while j < j_max and len(out) < limit:
            if end is not None and self._virtual_open(symbol, j) > end:
                break
            loop_no, i = divmod(j, n)
            out.append(kline_rest_row(rows[i], shift_ms=loop_no * self.span_ms))
            j += 1
        return out

    def klines_response(self, params: Mapping[str, str]) -> RestResponse:
        symbol = params.get("symbol", "").upper()
        if not symbol:
            return RestResponse.error(400, -1102, "Mandatory parameter 'symbol' was not sent.")
        if symbol not in self._by_symbol:
            return RestResponse.error(400, -1121, "Invalid symbol.")
        if params.get("interval") != "1m":
            return RestResponse.error(400, -1120, "Invalid interval.")
        try:
            start = int(params["startTime"]) if "startTime" in params else None
            end = int(params["endTime"]) if "endTime" in params else None
            limit = int(params.get("limit", DEFAULT_LIMIT))
        except ValueError:
            return RestResponse.error(400, -1100, "Illegal characters found in a parameter.")
        if not 1 <= limit <= MAX_LIMIT:
            return RestResponse.error(400, -1130, "Invalid data sent for a parameter: limit.")
        if start is not None and end is not None and start > end:
            return RestResponse.error(400, -1023, "Start time is greater than end time.")
        return RestResponse.json(200, self.klines_rows(symbol, start=start, end=end, limit=limit))

    async def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        url = urlsplit(request.path)
        if request.headers.get("Upgrade", "").lower() == "websocket":
            if url.path == "/stream" or url.path.startswith("/ws/"):
                return None
            return connection.respond(404, "unknown websocket path\n")
        params = {k: v[-1] for k, v in parse_qs(url.query).items()}
        try:
            answer = await self.handle_rest(url.path, params)
        except Exception:
            log.exception("REST handler failed for %s", request.path)
            answer = RestResponse.error(500, -1000, "internal error")
        response = connection.respond(answer.status, answer.body.decode())
        del response.headers["Content-Type"]
        response.headers["Content-Type"] = "application/json;charset=UTF-8"
        for name, value in answer.headers.items():
            response.headers[name] = value
        return response

    # --- websocket -------------------------------------------------------------------------------------
    async def _handle_ws(self, ws: ServerConnection) -> None:
        if ws.request is None:  # only when the handshake failed; websockets then skips the handler
            return
        url = urlsplit(ws.request.path)
        combined = url.path == "/stream"
        session = Session(self, ws, next(self._sids), combined=combined)
        if combined:
            requested = parse_qs(url.query).get("streams", [""])[-1]
            session.streams = {s.lower() for s in requested.split("/") if s}
        else:
            session.streams = {url.path.removeprefix("/ws/").lower()}
        self.sessions.add(session)
        self.connections_total += 1
        self.max_concurrent = max(self.max_concurrent, len(self.sessions))
        self.notify()
        log.debug("session %d opened: %s", session.id, sorted(session.streams))
        try:
            await self.on_connect(session)
            async for message in ws:
                await self._handle_request(session, message)
        except ConnectionClosed:
            pass
        finally:
            self.sessions.discard(session)
            self.notify()
            log.debug("session %d closed after %d frames", session.id, session.sent)

    async def _handle_request(self, session: Session, message: str | bytes) -> None:
        """Binance's live subscription requests: ``{"method": "SUBSCRIBE", "params": [...], "id": 1}``."""
        try:
            req = orjson.loads(message)
            method, params, req_id = req.get("method"), req.get("params", []), req.get("id")
        except (orjson.JSONDecodeError, AttributeError):
            await session.send_raw(
                orjson.dumps({"error": {"code": 3, "msg": "Invalid JSON"}, "id": None}).decode()
            )
            return
        result: Any = None
        if method == "SUBSCRIBE" and isinstance(params, list):
            session.streams |= {str(p).lower() for p in params}
            self.notify()
        elif method == "UNSUBSCRIBE" and isinstance(params, list):
            session.streams -= {str(p).lower() for p in params}
            self.notify()
        elif method == "LIST_SUBSCRIPTIONS":
            result = sorted(session.streams)
        else:
            error = {"code": 2, "msg": f"Invalid request: unknown method {method!r}"}
            await session.send_raw(orjson.dumps({"error": error, "id": req_id}).decode())
            return
        await session.send_raw(orjson.dumps({"result": result, "id": req_id}).decode())

    async def _wait_for_listener(self) -> None:
        while not any(s.listening for s in self.sessions):
            self._changed.clear()
            await self._changed.wait()

    async def _pump(self) -> None:
        """Walk the timeline, broadcasting each frame to the sessions subscribed to its stream."""
        loop = asyncio.get_running_loop()
        anchor: tuple[float, int] | None = None  # (monotonic, E) the real-time pacing is relative to
        n = len(self._timeline)
        try:
            while n and (self.loop or self._cursor < n):
                if not any(s.listening for s in self.sessions):
                    anchor = None  # pause: the clock restarts when a client is back
                    await self._wait_for_listener()
                    continue
                kline, shift = self.frame_at(self._cursor)
                event_time = kline.close_time + shift
                if self.speed is not None:
                    if anchor is None:
                        anchor = (loop.time(), event_time)
                    delay = anchor[0] + (event_time - anchor[1]) / 1000.0 / self.speed - loop.time()
                    if delay > 0:
                        await asyncio.sleep(delay)
                        continue  # listeners may have changed while sleeping
                stream = stream_name(kline.symbol)
                event = mini_ticker_event(kline, shift_ms=shift)
                for session in [s for s in self.sessions if s.listening and s.wants(stream)]:
                    try:
                        await session.send_event(stream, event)
                    except ConnectionClosed:
                        continue
                    session.sent += 1
                    self.frames_sent += 1
                    await self.after_send(session, event)
                self._cursor += 1
                if self._cursor % 64 == 0:
                    await asyncio.sleep(0)  # fairness when the sockets never push back
            self._done.set()
            log.info("binance replay finished: %d frames sent", self.frames_sent)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("binance replay pump crashed")
            raise


__all__ = ["BinanceServer", "Session"]
