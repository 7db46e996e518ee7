"""Pure codecs for the Kafka `prices`, `alerts` and `dlq` topics.

Tick message format (other tools produce to `prices` in this format)::

    key   = b"BTCUSDT"
    value = {"symbol": "BTCUSDT", "price": 58185.9, "ts": 1722816059999,
             "open": 58144.5, "high": 58190.5, "low": 58097.3,
             "base_volume": 381.2, "quote_volume": 22167798.2, "source": "ws"}

`symbol` may be omitted when the key carries it; `ts` (epoch ms) and `price` are required.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import orjson

from mw_core.markets.episodes import EpisodeEvent
from mw_core.models import DeadLetter, Tick, ms_to_dt

SYMBOL_MAX_LEN = 20
# Plausible event-time range: Binance launched in 2017; anything before is a unit or clock bug.
MIN_TS_MS = 1_483_228_800_000  # 2017-01-01
MAX_FUTURE_MS = 24 * 3600 * 1000  # at most one day ahead of the wall clock


class BadMessage(ValueError):
    """A message that cannot become a `Tick`; `reason` is a short machine-readable code."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


def valid_symbol(symbol: object) -> bool:
    return (
        isinstance(symbol, str)
        and 2 <= len(symbol) <= SYMBOL_MAX_LEN
        and symbol.isascii()
        and symbol.isalnum()
        and symbol.upper() == symbol
    )


def _opt_float(value: Any) -> float | None:
    if value is None:
        return None
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def validate_tick(tick: Tick, *, now_ms: int, max_price: float = 1e9) -> Tick:
    """Reject absurd ticks (non-positive/NaN/huge price, implausible time, bad symbol)."""
    if not valid_symbol(tick.symbol):
        raise BadMessage("bad_symbol", repr(tick.symbol)[:64])
    price = tick.price
    if not math.isfinite(price):
        raise BadMessage("bad_price", f"non-finite price {price!r}")
    if price <= 0:
        raise BadMessage("bad_price", f"non-positive price {price!r}")
    if price > max_price:
        raise BadMessage("bad_price", f"absurd price {price!r} > {max_price:g}")
    if tick.ts < MIN_TS_MS:
        raise BadMessage("bad_ts", f"timestamp {tick.ts} before 2017")
    if tick.ts > now_ms + MAX_FUTURE_MS:
        raise BadMessage("bad_ts", f"timestamp {tick.ts} more than a day in the future")
    return tick


# Symbols already validated once; bounded so hostile input cannot grow it without limit.
_KNOWN_SYMBOLS: set[str] = set()
_KNOWN_SYMBOLS_MAX = 100_000
_OPTIONAL = ("open", "high", "low", "base_volume", "quote_volume")


# `Tick.__new__` of a NamedTuple is a Python-level lambda around tuple.__new__; the fast path
# calls tuple.__new__ directly (one frame less per tick; the same object).
_new_tick: Callable[[type[Tick], tuple[Any, ...]], Tick] = tuple.__new__  # type: ignore[assignment]


def decode_tick(key: bytes | None, value: bytes | None, now_ms: int, max_price: float = 1e9) -> Tick:
    """Decode and validate one `prices` record. Raises `BadMessage` with a reason.

    The common case (a well-formed record of a known symbol) takes a fast path with the same
    acceptance rules; anything unusual falls through to the full, reason-giving validation.
    """
    if value is None:
        raise BadMessage("empty", "null value")
    try:
        obj = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise BadMessage("malformed_json", str(exc)[:120]) from None
    if type(obj) is dict:
        get = obj.get
        symbol = get("symbol")
        price = get("price")
        ts = get("ts")
        if (
            type(symbol) is str
            and symbol in _KNOWN_SYMBOLS
            and type(ts) is int
            and (type(price) is float or type(price) is int)
            and 0 < price <= max_price  # JSON has no NaN/inf, orjson rejects them
            and MIN_TS_MS <= ts <= now_ms + MAX_FUTURE_MS
        ):
            if type(price) is int:
                price = float(price)
            if len(obj) == 3:  # exactly {symbol, price, ts}: the minimal record of other producers
                return _new_tick(Tick, (symbol, ts, price, None, None, None, None, None, "external"))
            source = get("source", "external")
            o = get("open")
            h = get("high")
            lo = get("low")
            bv = get("base_volume")
            qv = get("quote_volume")
            if (
                type(source) is str
                and len(source) <= 32
                and (o is None or type(o) is float)
                and (h is None or type(h) is float)
                and (lo is None or type(lo) is float)
                and (bv is None or type(bv) is float)
                and (qv is None or type(qv) is float)
            ):
                return _new_tick(Tick, (symbol, ts, price, o, h, lo, bv, qv, source))
    return _decode_slow(obj, key, now_ms=now_ms, max_price=max_price)


def _decode_slow(obj: Any, key: bytes | None, *, now_ms: int, max_price: float) -> Tick:
    if not isinstance(obj, dict):
        raise BadMessage("not_an_object", type(obj).__name__)
    symbol = obj.get("symbol")
    if symbol is None and key:
        try:
            symbol = key.decode("utf-8")
        except UnicodeDecodeError:
            raise BadMessage("bad_symbol", "key is not utf-8") from None
    if symbol is None:
        raise BadMessage("missing_field", "symbol")
    if "price" not in obj:
        raise BadMessage("missing_field", "price")
    if "ts" not in obj:
        raise BadMessage("missing_field", "ts")
    raw_price, raw_ts = obj["price"], obj["ts"]
    if isinstance(raw_price, bool) or not isinstance(raw_price, int | float | str):
        raise BadMessage("bad_price", f"price of type {type(raw_price).__name__}")
    try:
        price = float(raw_price)
    except ValueError:
        raise BadMessage("bad_price", repr(raw_price)[:64]) from None
    if isinstance(raw_ts, bool) or not isinstance(raw_ts, int | float):
        raise BadMessage("bad_ts", f"ts of type {type(raw_ts).__name__}")
    if not math.isfinite(raw_ts):
        raise BadMessage("bad_ts", "non-finite ts")
    source = obj.get("source", "external")
    tick = Tick(
        symbol=symbol,
        ts=int(raw_ts),
        price=price,
        open=_opt_float(obj.get("open")),
        high=_opt_float(obj.get("high")),
        low=_opt_float(obj.get("low")),
        base_volume=_opt_float(obj.get("base_volume")),
        quote_volume=_opt_float(obj.get("quote_volume")),
        source=source if isinstance(source, str) and len(source) <= 32 else "external",
    )
    tick = validate_tick(tick, now_ms=now_ms, max_price=max_price)
    if len(_KNOWN_SYMBOLS) < _KNOWN_SYMBOLS_MAX:
        _KNOWN_SYMBOLS.add(tick.symbol)
    return tick


def encode_tick(tick: Tick) -> tuple[bytes, bytes]:
    """(key, value) for the `prices` topic."""
    body: dict[str, Any] = {"symbol": tick.symbol, "price": tick.price, "ts": tick.ts, "source": tick.source}
    for name in ("open", "high", "low", "base_volume", "quote_volume"):
        value = getattr(tick, name)
        if value is not None:
            body[name] = value
    return tick.symbol.encode(), orjson.dumps(body)


def encode_event(e: EpisodeEvent) -> tuple[bytes, bytes]:
    """(key, value) for the `alerts` topic: one episode event (``open`` / ``escalate`` / ``close``).

    Example value::

        {"type": "episode", "kind": "open", "episode_id": "SOLUSDT-1722820079999", "seq": 1,
         "symbol": "SOLUSDT", "ts": 1722820079999, "time": "2024-08-05T01:07:59.999000+00:00",
         "window_s": 300, "ret": -0.0458, "return": -0.0458, "direction": "down", "price": 129.1,
         "threshold": 0.03, "ref_price": 135.3, "ref_ts": 1722819779999, "peak_ret": -0.0458,
         "peak_window_s": 300, "extreme_price": 129.1, "opened_ts": 1722820079999, "summary": "..."}
    """
    body: dict[str, Any] = {
        "type": "episode",
        "kind": e.kind,
        "episode_id": e.episode_id,
        "seq": e.seq,
        "symbol": e.symbol,
        "ts": e.ts,
        "time": ms_to_dt(e.ts).isoformat(),
        "window_s": e.window_s,
        "ret": e.ret,
        "return": e.ret,
        "direction": e.direction,
        "price": e.price,
        "threshold": e.threshold,
        "ref_price": e.ref_price,
        "ref_ts": e.ref_ts,
        "peak_ret": e.peak_ret,
        "peak_window_s": e.peak_window_s,
        "extreme_price": e.extreme_price,
        "opened_ts": e.opened_ts,
        "summary": e.summary,
    }
    return e.symbol.encode(), orjson.dumps(body)


def event_key(value: bytes | None) -> tuple[str, int] | None:
    """``(episode_id, seq)`` of an `alerts` record, None when it is not an episode event."""
    try:
        body = orjson.loads(value or b"")
        if body.get("type") != "episode":
            return None
        return (str(body["episode_id"]), int(body["seq"]))
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
        return None


def encode_dead_letter(dl: DeadLetter) -> bytes:
    """Value for the `dlq` topic. The raw payload is kept as text (lossy for binary)."""
    return orjson.dumps(
        {
            "reason": dl.reason,
            "source": dl.source,
            "detail": dl.detail,
            "raw": dl.raw[:4096].decode("utf-8", errors="replace"),
        }
    )
