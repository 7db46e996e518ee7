"""Tick / alert / dead-letter codecs: the `prices` topic contract other tools rely on."""

from __future__ import annotations

import math
from dataclasses import replace

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mw_core.markets import codec
from mw_core.models import DeadLetter, Tick
from tests.factories import opening_event

pytestmark = pytest.mark.unit
NOW = 1_800_000_000_000


def test_round_trip() -> None:
    tick = Tick("BTCUSDT", 1_722_816_059_999, 58185.9, 58144.5, 58190.5, 58097.3, 381.2, 2.2e7, "ws")
    key, value = codec.encode_tick(tick)
    assert key == b"BTCUSDT"
    assert codec.decode_tick(key, value, now_ms=NOW) == tick


def test_minimal_external_format_with_symbol_from_key() -> None:
    tick = codec.decode_tick(b"ETHUSDT", b'{"price": "2500.5", "ts": 1722816059999}', now_ms=NOW)
    assert (tick.symbol, tick.price, tick.ts, tick.source) == ("ETHUSDT", 2500.5, 1722816059999, "external")


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b"", "malformed_json"),
        (b"{", "malformed_json"),
        (b"[]", "not_an_object"),
        (b'{"symbol":"BTCUSDT","ts":1722816059999}', "missing_field"),
        (b'{"symbol":"BTCUSDT","price":1}', "missing_field"),
        (b'{"symbol":"BTCUSDT","price":0,"ts":1722816059999}', "bad_price"),
        (b'{"symbol":"BTCUSDT","price":-1,"ts":1722816059999}', "bad_price"),
        (b'{"symbol":"BTCUSDT","price":1e30,"ts":1722816059999}', "bad_price"),
        (b'{"symbol":"BTCUSDT","price":"abc","ts":1722816059999}', "bad_price"),
        (b'{"symbol":"BTCUSDT","price":true,"ts":1722816059999}', "bad_price"),
        (b'{"symbol":"BTCUSDT","price":1,"ts":0}', "bad_ts"),
        (b'{"symbol":"BTCUSDT","price":1,"ts":"today"}', "bad_ts"),
        (b'{"symbol":"BTCUSDT","price":1,"ts":1900000000000}', "bad_ts"),
        (b'{"symbol":"btc usdt","price":1,"ts":1722816059999}', "bad_symbol"),
        (b'{"symbol":"<script>","price":1,"ts":1722816059999}', "bad_symbol"),
    ],
)
def test_rejects_with_reason(value: bytes, reason: str) -> None:
    with pytest.raises(codec.BadMessage) as err:
        codec.decode_tick(b"BTCUSDT", value, now_ms=NOW)
    assert err.value.reason == reason


@given(st.binary(max_size=200), st.one_of(st.none(), st.binary(max_size=30)))
def test_fuzz_bytes_only_ever_bad_message(value: bytes, key: bytes | None) -> None:
    try:
        tick = codec.decode_tick(key, value, now_ms=NOW)
    except codec.BadMessage:
        return
    assert tick.price > 0 and math.isfinite(tick.price)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.floats(allow_nan=False)
    | st.integers(-(2**63), 2**63 - 1)
    | st.text(max_size=10),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=10,
)


@given(st.fixed_dictionaries({}, optional={"symbol": json_values, "price": json_values, "ts": json_values}))
def test_fuzz_json_objects_only_ever_bad_message(obj: dict) -> None:
    try:
        tick = codec.decode_tick(b"BTCUSDT", orjson.dumps(obj), now_ms=NOW)
    except codec.BadMessage:
        return
    assert 0 < tick.price <= 1e9
    assert codec.MIN_TS_MS <= tick.ts <= NOW + codec.MAX_FUTURE_MS


def test_episode_event_and_dead_letter_encoding() -> None:
    # ref_ts one window back (1_722_819_959_999), the move is the peak and the extreme
    opened = opening_event(
        "BTCUSDT", 1_722_820_259_999, 300, -0.0484, price=54321.0, threshold=0.03, ref_price=57085.0
    )
    e = replace(
        opened, seq=2, kind="escalate", opened_ts=1_722_820_199_999, summary="BTCUSDT down -4.84% over 5 min"
    )
    key, value = codec.encode_event(e)
    body = orjson.loads(value)
    assert key == b"BTCUSDT"
    assert body["type"] == "episode" and body["kind"] == "escalate" and body["seq"] == 2
    assert body["window_s"] == 300 and body["direction"] == "down" and body["ret"] == -0.0484
    assert body["time"] == "2024-08-05T01:10:59.999000+00:00"
    assert codec.event_key(value) == ("BTCUSDT-1722820259999", 2)
    assert codec.event_key(orjson.dumps({"type": "enrichment", "episode_id": "x", "seq": 1})) is None
    assert codec.event_key(b"not json") is None
    dl = orjson.loads(codec.encode_dead_letter(DeadLetter("bad_price", "prices", b"\xff{", "x")))
    assert dl["reason"] == "bad_price" and dl["raw"] == "\ufffd{"


finite = st.floats(min_value=1e-6, max_value=1e6, allow_nan=False)


@given(
    price=st.one_of(finite, st.integers(1, 10**6)),
    ts=st.integers(codec.MIN_TS_MS, NOW),
    extra=st.fixed_dictionaries(
        {},
        optional={
            "open": finite,
            "high": finite,
            "low": st.one_of(finite, st.none()),
            "base_volume": finite,
            "quote_volume": finite,
            "source": st.sampled_from(["ws", "rest_backfill", "replay", "x" * 40]),
        },
    ),
)
def test_fast_path_equals_full_validation(price: float, ts: int, extra: dict) -> None:
    """Known symbols take the fast path (incl. the minimal {symbol, price, ts} record): same Tick."""
    codec.decode_tick(b"SOLUSDT", orjson.dumps({"symbol": "SOLUSDT", "price": 1.0, "ts": ts}), now_ms=NOW)
    assert "SOLUSDT" in codec._KNOWN_SYMBOLS
    value = orjson.dumps({"symbol": "SOLUSDT", "price": price, "ts": ts, **extra})
    fast = codec.decode_tick(b"SOLUSDT", value, now_ms=NOW)
    full = codec._decode_slow(orjson.loads(value), b"SOLUSDT", now_ms=NOW, max_price=1e9)
    assert type(fast) is Tick and fast == full
    assert [type(v) for v in fast] == [type(v) for v in full]
    assert type(fast.price) is float
