"""Fault injection on top of the shipped Binance-protocol replay server (test-only).

`FaultyBinanceServer` is `mw_core.replay.server.BinanceServer` plus scripted misbehaviour of the
real exchange, applied to the websocket sessions listed in `faulty_sessions` (by default only the
first connection, so the reconnect is healthy):

- `abort_after=N`: drop the TCP connection abruptly after N frames (no close frame) and let the
  exchange publish `drop_after_abort` more frames nobody receives (a real gap for the backfill).
- `freeze_after=N`: after N frames stop sending but keep the connection open (half-open).
- `shutdown_after=N`: send Binance's ``serverShutdown`` event after N frames and close the
  connection `shutdown_close_after_s` later (frames keep flowing until then).
- `garbage_every=N`: after every N-th frame also send the next message of `garbage`.
- REST: `rest_faults` is a list of statuses answered (in order) to the first klines requests, with
  ``Retry-After: retry_after`` on 418/429; then the real klines. Every REST request is recorded.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from mw_core.replay.klines import Kline
from mw_core.replay.server import BinanceServer, Session
from mw_core.replay.wire import RestResponse

GARBAGE: list[str | bytes] = [
    "{not json",
    "[1, 2, 3]",
    orjson.dumps({"stream": "btcusdt@miniTicker", "data": "oops"}).decode(),
    orjson.dumps(
        {
            "stream": "btcusdt@miniTicker",
            "data": {"e": "24hrMiniTicker", "E": 1722816059999, "s": "BTCUSDT", "c": "-5"},
        }
    ).decode(),
    orjson.dumps({"e": "somethingElse", "E": 1722816059999}).decode(),
    b"\xff\xfe binary junk",
]
GARBAGE_REASONS = {"malformed_json", "not_an_object", "bad_shape", "bad_price", "unknown_event"}


@dataclass(frozen=True, slots=True)
class RestCall:
    at: float  # monotonic seconds
    path: str
    params: Mapping[str, str]
    status: int


class FaultyBinanceServer(BinanceServer):
    def __init__(
        self,
        klines: Iterable[Kline],
        *,
        faulty_sessions: Iterable[int] = (1,),
        abort_after: int | None = None,
        drop_after_abort: int = 0,
        freeze_after: int | None = None,
        shutdown_after: int | None = None,
        shutdown_close_after_s: float = 3.0,
        garbage_every: int | None = None,
        garbage: Iterable[str | bytes] = GARBAGE,
        rest_faults: Iterable[int] = (),
        retry_after: str | None = "1",
        **options: Any,
    ) -> None:
        super().__init__(klines, **options)
        self.faulty_sessions = set(faulty_sessions)
        self.abort_after = abort_after
        self.drop_after_abort = drop_after_abort
        self.freeze_after = freeze_after
        self.shutdown_after = shutdown_after
        self.shutdown_close_after_s = shutdown_close_after_s
        self.garbage_every = garbage_every
        self._garbage = itertools.cycle(list(garbage))
        self.garbage_sent = 0
        self.rest_faults = list(rest_faults)
        self.retry_after = retry_after
        self.rest_calls: list[RestCall] = []
        self.aborted: list[int] = []
        self.frozen: list[int] = []
        self.shutdown_sent: list[int] = []

    async def after_send(self, session: Session, event: Mapping[str, Any]) -> None:
        if self.garbage_every and session.sent % self.garbage_every == 0:
            await session.send_raw(next(self._garbage))
            self.garbage_sent += 1
        if session.id not in self.faulty_sessions:
            return
        if self.abort_after is not None and session.sent == self.abort_after:
            session.abort()
            self.aborted.append(session.id)
            self.skip(self.drop_after_abort)
        elif self.freeze_after is not None and session.sent == self.freeze_after:
            session.freeze()
            self.frozen.append(session.id)
        elif self.shutdown_after is not None and session.sent == self.shutdown_after:
            await session.send_raw(orjson.dumps({"e": "serverShutdown", "E": event["E"]}).decode())
            self.shutdown_sent.append(session.id)
            self.spawn(self._close_later(session))

    async def _close_later(self, session: Session) -> None:
        await asyncio.sleep(self.shutdown_close_after_s)
        await session.close(1001, "server shutdown")

    async def handle_rest(self, path: str, params: Mapping[str, str]) -> RestResponse:
        if path == "/api/v3/klines" and self.rest_faults:
            status = self.rest_faults.pop(0)
            headers = {"Retry-After": self.retry_after} if status in (418, 429) and self.retry_after else {}
            msg = "Too many requests; injected fault." if status in (418, 429) else "Injected server error."
            answer = RestResponse.error(status, -1003 if status in (418, 429) else -1001, msg, headers)
        else:
            answer = await super().handle_rest(path, params)
        self.rest_calls.append(RestCall(time.monotonic(), path, dict(params), answer.status))
        return answer
