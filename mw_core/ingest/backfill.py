"""REST backfill of the gap a websocket reconnect left, from Binance 1-minute klines.

Contract:
- `Backfiller.fill(symbol, after_ms=..., before_ms=...)` returns the ticks of the 1m klines whose
  close time lies strictly between the newest event time seen before the reconnect (`after_ms`)
  and the first event time seen after it (`before_ms`), oldest first, ``source="rest_backfill"``,
  ``ts`` = kline close time, ``price`` = close.
- Why the upper bound is the first ``E`` on the new connection and not the wall clock: event times
  are exchange time. During a replay (`mw replay`) exchange time is 2024 while the wall clock is
  today, and even live the first new frame is exactly where the websocket resumed; everything
  after it arrives on the socket. Bounding by it makes backfill and stream meet without overlap.
- HTTP: ``GET {rest_url}/api/v3/klines?symbol=&interval=1m&startTime=&endTime=&limit=``, paged
  by ``limit`` up to ``max_pages`` pages (a longer gap is truncated and logged). 429 / 418 wait
  for ``Retry-After`` (giving up when Binance asks for longer than ``max_retry_after_s``); 5xx and
  transport errors are retried with exponential full-jitter backoff (`mw_core.adapters.retry`),
  ``max_attempts`` per page; other 4xx fail at once.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import httpx

from mw_core.adapters.retry import parse_retry_after, retry_async
from mw_core.markets.frames import parse_klines
from mw_core.models import Tick

log = logging.getLogger(__name__)

MINUTE_MS = 60_000


class BackfillError(RuntimeError):
    """The gap could not be filled (non-retryable answer, attempts exhausted, ban too long)."""


class RetryableHTTPError(Exception):
    """A 429 / 418 / 5xx answer; `retry_after_s` is the wait Binance asked for, if any."""

    def __init__(self, status: int, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.retry_after_s = retry_after_s


class Backfiller:
    """Fetch 1m klines over REST to fill websocket gaps.

    Args:
        rest_url: Base URL, e.g. ``https://api.binance.com``.
        client: An `httpx.AsyncClient` to use (owned by the caller); one is created otherwise.
        page_limit: Klines per request (Binance max 1000).
        max_pages: Cap on requests per gap.
        max_attempts: Attempts per request.
        max_retry_after_s: Longest ``Retry-After`` honoured; longer -> `BackfillError`.
        backoff_initial_s / backoff_max_s: Exponential full-jitter backoff for 5xx / transport errors.
        timeout_s: Per-request timeout.
        max_price: Prices above this are rejected.
    """

    def __init__(
        self,
        rest_url: str,
        *,
        client: httpx.AsyncClient | None = None,
        page_limit: int = 1000,
        max_pages: int = 10,
        max_attempts: int = 6,
        max_retry_after_s: float = 120.0,
        backoff_initial_s: float = 0.2,
        backoff_max_s: float = 10.0,
        timeout_s: float = 10.0,
        max_price: float = 1e9,
    ) -> None:
        self.rest_url = rest_url.rstrip("/")
        self._own_client = client is None
        self._client = client or httpx.AsyncClient(timeout=timeout_s)
        self.page_limit = page_limit
        self.max_pages = max_pages
        self.max_attempts = max_attempts
        self.max_retry_after_s = max_retry_after_s
        self.max_price = max_price
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.requests = 0
        self.retries = 0

    async def aclose(self) -> None:
        if self._own_client:
            await self._client.aclose()

    async def __aenter__(self) -> Backfiller:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def _on_retry(self, attempt: int, exc: BaseException, delay: float) -> None:
        self.retries += 1
        log.warning("backfill request failed (%s); retry %d in %.1fs", exc, attempt, delay)

    async def _get_page(self, params: dict[str, Any]) -> Any:
        try:
            return await retry_async(
                self._request,
                params,
                retry_on=(RetryableHTTPError, httpx.TransportError),
                base_s=self.backoff_initial_s,
                cap_s=self.backoff_max_s,
                max_attempts=self.max_attempts,
                on_retry=self._on_retry,
                retry_after=_asked_wait,
            )
        except (RetryableHTTPError, httpx.TransportError) as exc:
            raise BackfillError(
                f"klines {params['symbol']}: giving up after {self.max_attempts} attempts: {exc}"
            ) from exc

    async def _request(self, params: dict[str, Any]) -> Any:
        self.requests += 1
        resp = await self._client.get(f"{self.rest_url}/api/v3/klines", params=params)
        status = resp.status_code
        if status in (418, 429):
            retry_after = parse_retry_after(resp.headers)
            if retry_after is not None and retry_after > self.max_retry_after_s:
                raise BackfillError(
                    f"klines {params['symbol']}: HTTP {status}, Retry-After {retry_after:g}s exceeds "
                    f"{self.max_retry_after_s:g}s; not hammering a rate-limited API"
                )
            raise RetryableHTTPError(status, "rate limited", retry_after if retry_after is not None else 1.0)
        if status >= 500:
            raise RetryableHTTPError(status, resp.text[:120])
        if status >= 400:
            raise BackfillError(f"klines {params['symbol']}: HTTP {status}: {resp.text[:200]}")
        return resp.content

    async def fill(self, symbol: str, *, after_ms: int, before_ms: int) -> list[Tick]:
        """Ticks for the klines closing strictly between `after_ms` and `before_ms` (see module doc).

        Raises:
            BackfillError: A page could not be fetched.
            BadMessage: Binance answered with a malformed page.
        """
        out: list[Tick] = []
        # `startTime` filters on open time: start at the kline that was open at `after_ms`.
        start = after_ms - MINUTE_MS + 1
        end = before_ms - 1
        pages = 0
        while start <= end:
            if pages >= self.max_pages:
                log.warning(
                    "backfill %s truncated at %d pages (%d klines); gap continues until %d",
                    symbol,
                    pages,
                    len(out),
                    before_ms,
                )
                break
            params = {
                "symbol": symbol,
                "interval": "1m",
                "startTime": start,
                "endTime": end,
                "limit": self.page_limit,
            }
            raw = await self._get_page(params)
            pages += 1
            ticks = parse_klines(raw, symbol=symbol, now_ms=int(time.time() * 1000), max_price=self.max_price)
            out.extend(t for t in ticks if after_ms < t.ts < before_ms)
            if len(ticks) < self.page_limit:
                break
            # The next kline opens 1 ms after the last one closed.
            start = ticks[-1].ts + 1
        return out


def _asked_wait(exc: BaseException) -> float | None:
    """The ``Retry-After`` of a rate-limit answer replaces the backoff (already capped in `_request`)."""
    return exc.retry_after_s if isinstance(exc, RetryableHTTPError) else None


__all__ = ["BackfillError", "Backfiller"]
