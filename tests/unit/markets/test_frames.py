"""Binance frame and REST klines parsers (pure), replayed on recorded and fuzzed payloads."""

from __future__ import annotations

import contextlib
import json
import math
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mw_core.markets.codec import BadMessage
from mw_core.markets.frames import ServerShutdown, SubscriptionAck, parse_frame, parse_klines
from mw_core.models import Tick

pytestmark = pytest.mark.unit

NOW = 1_800_000_000_000  # wall clock far from the event time: ts must come from E
E = 1_722_816_059_999

# Recorded combined-stream frame (values of the BTCUSDT 2024-08-05 00:00 kline).
FRAME: dict[str, Any] = {
    "stream": "btcusdt@miniTicker",
    "data": {
        "e": "24hrMiniTicker",
        "E": E,
        "s": "BTCUSDT",
        "c": "58185.90000000",
        "o": "58144.50000000",
        "h": "58190.50000000",
        "l": "58097.30000000",
        "v": "381.20800000",
        "q": "22167798.24570000",
    },
}
TICK = Tick("BTCUSDT", E, 58185.9, 58144.5, 58190.5, 58097.3, 381.208, 22167798.2457, "ws")

# Recorded GET /api/v3/klines?symbol=BTCUSDT&interval=1m&startTime=1722816000000&limit=3
KLINES = (
    b'[[1722816000000,"58144.50000000","58190.50000000","58097.30000000","58185.90000000",'
    b'"381.20800000",1722816059999,"22167798.24570000",4678,"202.17500000","11755874.05210000","0"],'
    b'[1722816060000,"58186.00000000","58213.90000000","58103.20000000","58112.80000000",'
    b'"450.23800000",1722816119999,"26186715.46050000",4724,"201.12200000","11699634.27630000","0"],'
    b'[1722816120000,"58112.80000000","58194.00000000","58092.20000000","58188.50000000",'
    b'"160.52300000",1722816179999,"9331039.49100000",2618,"85.89100000","4992976.12840000","0"]]'
)


def frame(**data: Any) -> bytes:
    return orjson.dumps({"stream": "btcusdt@miniTicker", "data": {**FRAME["data"], **data}})


def test_combined_stream_mini_ticker_becomes_tick_at_exchange_time() -> None:
    assert parse_frame(orjson.dumps(FRAME), now_ms=NOW) == TICK
    assert parse_frame(orjson.dumps(FRAME).decode(), now_ms=NOW) == TICK


def test_raw_stream_payload_and_missing_optional_fields() -> None:
    data = {"e": "24hrMiniTicker", "E": E, "s": "ETHUSDT", "c": "2500.5"}
    assert parse_frame(orjson.dumps(data), now_ms=NOW) == Tick("ETHUSDT", E, 2500.5, source="ws")


@pytest.mark.parametrize(
    "payload",
    [
        {"e": "serverShutdown", "E": 1722816060000},
        {"stream": "btcusdt@miniTicker", "data": {"e": "serverShutdown", "E": 1722816060000}},
    ],
)
def test_server_shutdown_bare_or_enveloped(payload: dict[str, Any]) -> None:
    assert parse_frame(orjson.dumps(payload), now_ms=NOW) == ServerShutdown(1722816060000)


def test_subscription_ack() -> None:
    assert parse_frame(b'{"result":null,"id":1}', now_ms=NOW) == SubscriptionAck(1, None)
    listed = parse_frame(b'{"result":["btcusdt@miniTicker"],"id":"x"}', now_ms=NOW)
    assert listed == SubscriptionAck("x", ["btcusdt@miniTicker"])


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"", "malformed_json"),
        (b"{not json", "malformed_json"),
        (b"\xff\xfe", "malformed_json"),
        (b"[1,2]", "not_an_object"),
        (b'"text"', "not_an_object"),
        (b'{"stream":"btcusdt@miniTicker","data":"oops"}', "bad_shape"),
        (b'{"stream":1,"data":{}}', "bad_shape"),
        (b'{"data":{"e":"24hrMiniTicker"}}', "bad_shape"),
        (b'{"error":{"code":2,"msg":"Invalid request"},"id":1}', "api_error"),
        (b'{"result":null,"id":true}', "bad_shape"),
        (b'{"e":"trade","E":1722816059999}', "unknown_event"),
        (b"{}", "unknown_event"),
        (b'{"e":"serverShutdown"}', "bad_ts"),
        (frame(E=None), "bad_ts"),
        (frame(E="1722816059999"), "bad_ts"),
        (frame(E=True), "bad_ts"),
        (frame(E=1_000), "bad_ts"),
        (frame(E=NOW * 10), "bad_ts"),
        (frame(c="-5"), "bad_price"),
        (frame(c="0"), "bad_price"),
        (frame(c="NaN"), "bad_price"),
        (frame(c="1e400"), "bad_price"),
        (frame(c="1_000"), "bad_price"),
        (frame(c=None), "bad_price"),
        (frame(c=5e12), "bad_price"),
        (frame(o="abc"), "bad_number"),
        (frame(v=[1]), "bad_number"),
        (frame(s="btcusdt"), "bad_symbol"),
        (frame(s=5), "bad_symbol"),
        (frame(s="ETHUSDT"), "stream_mismatch"),
        (orjson.dumps({"e": "24hrMiniTicker", "E": E, "s": "BTC-USD", "c": "1"}), "bad_symbol"),
        (orjson.dumps({"e": "24hrMiniTicker", "E": E, "c": "1"}), "missing_field"),
    ],
)
def test_garbage_raises_bad_message_with_reason(raw: bytes, reason: str) -> None:
    with pytest.raises(BadMessage) as err:
        parse_frame(raw, now_ms=NOW)
    assert err.value.reason == reason


# Python's json writes integers beyond 64 bits and Infinity; orjson must reject those as BadMessage.
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)


@given(st.binary(max_size=300))
def test_fuzz_arbitrary_bytes_only_raise_bad_message(raw: bytes) -> None:
    with contextlib.suppress(BadMessage):
        parse_frame(raw, now_ms=NOW)


@given(json_values)
def test_fuzz_arbitrary_json_only_raise_bad_message(value: Any) -> None:
    with contextlib.suppress(BadMessage):
        parse_frame(json.dumps(value).encode(), now_ms=NOW)


@given(st.sampled_from(["e", "E", "s", "c", "o", "h", "l", "v", "q"]), json_values, st.booleans())
def test_fuzz_mutated_frames_parse_or_raise_bad_message(field: str, value: Any, envelope: bool) -> None:
    data = {**FRAME["data"], field: value}
    raw = json.dumps({"stream": "btcusdt@miniTicker", "data": data} if envelope else data).encode()
    try:
        out = parse_frame(raw, now_ms=NOW)
    except BadMessage:
        return
    if isinstance(out, Tick):
        assert out.symbol == "BTCUSDT" and math.isfinite(out.price) and out.price > 0


def test_rest_klines_become_backfill_ticks_at_close_time() -> None:
    ticks = parse_klines(KLINES, symbol="BTCUSDT", now_ms=NOW)
    assert [t.ts for t in ticks] == [1722816059999, 1722816119999, 1722816179999]
    assert ticks[0] == Tick(
        "BTCUSDT", 1722816059999, 58185.9, 58144.5, 58190.5, 58097.3, 381.208, 22167798.2457, "rest_backfill"
    )
    assert {t.source for t in ticks} == {"rest_backfill"}
    assert parse_klines(b"[]", symbol="BTCUSDT", now_ms=NOW) == []


@pytest.mark.parametrize(
    ("raw", "reason", "detail"),
    [
        (b'{"code":-1121,"msg":"Invalid symbol."}', "api_error", "-1121"),
        (b"{oops", "malformed_json", ""),
        (b'{"a":1}', "bad_shape", ""),
        (b"[[1722816000000]]", "bad_shape", "row 0"),
        (
            KLINES[:-1] + b',[1722816180000,"1","1","1","x","1",1722816239999,"1",1,"1","1","0"]]',
            "bad_price",
            "row 3",
        ),
        (b'[[1722816000000,"1","1","1","1","1","soon","1",1,"1","1","0"]]', "bad_ts", "row 0"),
        (b'[[1722816060000,"1","1","1","1","1",1722816000000,"1",1,"1","1","0"]]', "bad_ts", "row 0"),
    ],
)
def test_bad_klines_payloads(raw: bytes, reason: str, detail: str) -> None:
    with pytest.raises(BadMessage) as err:
        parse_klines(raw, symbol="BTCUSDT", now_ms=NOW)
    assert err.value.reason == reason
    assert detail in str(err.value)


@given(json_values)
def test_fuzz_klines_only_raise_bad_message(value: Any) -> None:
    with contextlib.suppress(BadMessage):
        parse_klines(json.dumps(value).encode(), symbol="BTCUSDT", now_ms=NOW)
