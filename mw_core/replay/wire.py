"""Binance's wire formats as the replay server speaks them (pure: no I/O).

Contract:
- `mini_ticker_event`: the ``24hrMiniTicker`` payload of one kline (``E`` = close time, ``c`` =
  close, ``o/h/l/v/q`` from the kline, decimals as strings with 8 places, like the exchange).
- `kline_rest_row`: one ``GET /api/v3/klines`` row (Binance's 12-column array).
- `RestResponse`: an HTTP answer; `RestResponse.error` has Binance's ``{"code", "msg"}`` shape.
- `stream_name` / `parse_speed`: ``btcusdt@miniTicker`` and the ``--speed`` option (``max`` or a
  positive multiple of real time).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from mw_core.replay.klines import Kline

STREAM_SUFFIX = "@miniTicker"


def parse_speed(value: str | float | None) -> float | None:
    """``"max"``/None -> None (as fast as the client reads); ``"60"``/60 -> 60.0 x real time."""
    if value is None or (isinstance(value, str) and value.strip().lower() == "max"):
        return None
    speed = float(value)
    if not speed > 0:
        raise ValueError(f"speed must be `max` or a positive multiplier, got {value!r}")
    return speed


def _dec(value: float) -> str:
    return f"{value:.8f}"


def stream_name(symbol: str) -> str:
    """``BTCUSDT`` -> ``btcusdt@miniTicker`` (Binance's stream name)."""
    return f"{symbol.lower()}{STREAM_SUFFIX}"


def mini_ticker_event(k: Kline, *, shift_ms: int = 0) -> dict[str, Any]:
    """The ``24hrMiniTicker`` payload replaying kline `k` (shifted by `shift_ms`)."""
    return {
        "e": "24hrMiniTicker",
        "E": k.close_time + shift_ms,
        "s": k.symbol,
        "c": _dec(k.close),
        "o": _dec(k.open),
        "h": _dec(k.high),
        "l": _dec(k.low),
        "v": _dec(k.volume),
        "q": _dec(k.quote_volume),
    }


def kline_rest_row(k: Kline, *, shift_ms: int = 0) -> list[Any]:
    """One ``/api/v3/klines`` row for kline `k` (shifted by `shift_ms`)."""
    return [
        k.open_time + shift_ms,
        _dec(k.open),
        _dec(k.high),
        _dec(k.low),
        _dec(k.close),
        _dec(k.volume),
        k.close_time + shift_ms,
        _dec(k.quote_volume),
        k.trades,
        _dec(k.taker_buy_base),
        _dec(k.taker_buy_quote),
        "0",
    ]


@dataclass(frozen=True, slots=True)
class RestResponse:
    """An HTTP answer of the REST side."""

    status: int
    body: bytes
    headers: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, status: int, payload: Any, headers: Mapping[str, str] | None = None) -> RestResponse:
        return cls(status, orjson.dumps(payload), dict(headers or {}))

    @classmethod
    def error(
        cls, status: int, code: int, msg: str, headers: Mapping[str, str] | None = None
    ) -> RestResponse:
        """Binance's error shape: ``{"code": -1121, "msg": "Invalid symbol."}``."""
        return cls.json(status, {"code": code, "msg": msg}, headers)
