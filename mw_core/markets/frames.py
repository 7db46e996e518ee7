"""Pure parsers for Binance market data: combined-stream websocket frames and REST klines.

Contract:
- `parse_frame` turns one websocket text frame into a `Tick` (``24hrMiniTicker``), a
  `ServerShutdown` (Binance's notice that the connection will soon be closed) or a
  `SubscriptionAck` (reply to a ``SUBSCRIBE`` request), and raises `codec.BadMessage` with a short
  reason for anything else. Tick time is the exchange event time ``E``, never the local clock.
- `parse_klines` turns a ``GET /api/v3/klines`` response into ticks stamped with the kline close
  time (``source="rest_backfill"``), raising `BadMessage` when the payload or any row is broken.
- No I/O: the functions see bytes and return domain records; ``now_ms`` is passed in.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import orjson

from mw_core.markets.codec import BadMessage, validate_tick
from mw_core.models import Tick

MINI_TICKER = "24hrMiniTicker"
SERVER_SHUTDOWN = "serverShutdown"
_DECIMAL = re.compile(r"^-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?$")


@dataclass(frozen=True, slots=True)
class ServerShutdown:
    """Binance announced it will close this connection soon (at exchange time `ts`, epoch ms)."""

    ts: int


@dataclass(frozen=True, slots=True)
class SubscriptionAck:
    """Reply to a ``SUBSCRIBE`` / ``UNSUBSCRIBE`` request: ``{"result": null, "id": 1}``."""

    id: int | str | None
    result: Any = None


Frame = Tick | ServerShutdown | SubscriptionAck


def _loads(raw: bytes | str) -> Any:
    try:
        return orjson.loads(raw)
    except (orjson.JSONDecodeError, UnicodeError, ValueError) as exc:
        raise BadMessage("malformed_json", str(exc)[:120]) from None


def _decimal(value: Any, field: str, *, reason: str = "bad_number") -> float:
    """A Binance decimal: a JSON string such as ``"58185.90000000"`` (numbers accepted too)."""
    if isinstance(value, bool):
        raise BadMessage(reason, f"{field} is a boolean")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str) and _DECIMAL.match(value):
        return float(value)
    raise BadMessage(reason, f"{field}={value!r}"[:120])


def _opt_decimal(data: dict[str, Any], key: str, field: str) -> float | None:
    value = data.get(key)
    return None if value is None else _decimal(value, field)


def _epoch_ms(value: Any, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadMessage("bad_ts", f"{field}={value!r}"[:120])
    return value


def parse_frame(raw: bytes | str, *, now_ms: int, max_price: float = 1e9) -> Frame:
    """Parse one websocket frame of the combined stream (or of a raw ``/ws/<stream>``).

    A combined-stream miniTicker frame::

        {"stream": "btcusdt@miniTicker",
         "data": {"e": "24hrMiniTicker", "E": 1722816059999, "s": "BTCUSDT", "c": "58185.90000000",
                  "o": "58144.50000000", "h": "58190.50000000", "l": "58097.30000000",
                  "v": "381.20800000", "q": "22167798.24570000"}}

    becomes ``Tick("BTCUSDT", ts=1722816059999, price=58185.9, open=58144.5, high=58190.5,
    low=58097.3, base_volume=381.208, quote_volume=22167798.2457, source="ws")``.
    ``{"e": "serverShutdown", "E": 1722816060000}`` (bare or in the envelope) becomes
    `ServerShutdown`, ``{"result": null, "id": 1}`` becomes `SubscriptionAck`.

    Args:
        raw: The frame as received.
        now_ms: Wall-clock epoch ms, only used to reject implausible event times.
        max_price: Prices above this are rejected as absurd.

    Raises:
        BadMessage: With reason ``malformed_json``, ``not_an_object``, ``bad_shape``,
            ``api_error``, ``unknown_event``, ``stream_mismatch``, ``missing_field``,
            ``bad_number``, ``bad_price``, ``bad_ts`` or ``bad_symbol``.
    """
    obj = _loads(raw)
    if not isinstance(obj, dict):
        raise BadMessage("not_an_object", type(obj).__name__)
    stream: str | None = None
    if "stream" in obj or "data" in obj:
        stream, data = obj.get("stream"), obj.get("data")
        if not isinstance(stream, str) or not isinstance(data, dict):
            raise BadMessage(
                "bad_shape", "combined-stream envelope needs a string `stream` and an object `data`"
            )
    elif "error" in obj:
        raise BadMessage("api_error", repr(obj["error"])[:120])
    elif "id" in obj and "result" in obj and "e" not in obj:
        ack_id = obj["id"]
        if ack_id is not None and (isinstance(ack_id, bool) or not isinstance(ack_id, int | str)):
            raise BadMessage("bad_shape", f"ack id {ack_id!r}"[:120])
        return SubscriptionAck(id=ack_id, result=obj["result"])
    else:
        data = obj
    event = data.get("e")
    if event == SERVER_SHUTDOWN:
        return ServerShutdown(ts=_epoch_ms(data.get("E"), "E"))
    if event != MINI_TICKER:
        raise BadMessage("unknown_event", repr(event)[:64])
    for key in ("E", "s", "c"):
        if key not in data:
            raise BadMessage("missing_field", key)
    symbol = data["s"]
    if not isinstance(symbol, str):
        raise BadMessage("bad_symbol", repr(symbol)[:64])
    if stream is not None and stream.partition("@")[0] != symbol.lower():
        raise BadMessage("stream_mismatch", f"stream {stream!r} carries symbol {symbol!r}"[:120])
    tick = Tick(
        symbol=symbol,
        ts=_epoch_ms(data["E"], "E"),
        price=_decimal(data["c"], "c", reason="bad_price"),
        open=_opt_decimal(data, "o", "o"),
        high=_opt_decimal(data, "h", "h"),
        low=_opt_decimal(data, "l", "l"),
        base_volume=_opt_decimal(data, "v", "v"),
        quote_volume=_opt_decimal(data, "q", "q"),
        source="ws",
    )
    return validate_tick(tick, now_ms=now_ms, max_price=max_price)


def parse_kline_row(
    row: Any, *, symbol: str, now_ms: int, max_price: float = 1e9, source: str = "rest_backfill"
) -> Tick:
    """One ``/api/v3/klines`` row -> `Tick` at the kline close time.

    A row::

        [1722816000000, "58144.50000000", "58190.50000000", "58097.30000000", "58185.90000000",
         "381.20800000", 1722816059999, "22167798.24570000", 4678, "202.17500000",
         "11755874.05210000", "0"]

    becomes ``Tick("BTCUSDT", ts=1722816059999, price=58185.9, open=58144.5, ...,
    source="rest_backfill")``.
    """
    if not isinstance(row, list) or len(row) < 8:
        raise BadMessage("bad_shape", "kline row must be an array of at least 8 fields")
    open_time = _epoch_ms(row[0], "openTime")
    close_time = _epoch_ms(row[6], "closeTime")
    if close_time < open_time:
        raise BadMessage("bad_ts", f"closeTime {close_time} before openTime {open_time}")
    tick = Tick(
        symbol=symbol,
        ts=close_time,
        price=_decimal(row[4], "close", reason="bad_price"),
        open=_decimal(row[1], "open"),
        high=_decimal(row[2], "high"),
        low=_decimal(row[3], "low"),
        base_volume=_decimal(row[5], "volume"),
        quote_volume=_decimal(row[7], "quoteVolume"),
        source=source,
    )
    return validate_tick(tick, now_ms=now_ms, max_price=max_price)


def parse_klines(
    raw: bytes | str | list[Any],
    *,
    symbol: str,
    now_ms: int,
    max_price: float = 1e9,
    source: str = "rest_backfill",
) -> list[Tick]:
    """Parse a ``GET /api/v3/klines`` response (a JSON array of rows, see `parse_kline_row`).

    Raises:
        BadMessage: The payload is not an array (``api_error`` for Binance's
            ``{"code": -1121, "msg": "Invalid symbol."}``) or a row is broken (the detail names
            the row index).
    """
    rows = _loads(raw) if isinstance(raw, bytes | str) else raw
    if isinstance(rows, dict) and "code" in rows:
        raise BadMessage("api_error", f"{rows.get('code')}: {rows.get('msg')}"[:120])
    if not isinstance(rows, list):
        raise BadMessage("bad_shape", f"klines payload is a {type(rows).__name__}, not an array")
    out: list[Tick] = []
    for index, row in enumerate(rows):
        try:
            out.append(parse_kline_row(row, symbol=symbol, now_ms=now_ms, max_price=max_price, source=source))
        except BadMessage as exc:
            raise BadMessage(exc.reason, f"row {index}: {exc.detail}"[:160]) from None
    return out


__all__ = [
    "MINI_TICKER",
    "SERVER_SHUTDOWN",
    "Frame",
    "ServerShutdown",
    "SubscriptionAck",
    "parse_frame",
    "parse_kline_row",
    "parse_klines",
]
