"""`decode_partition`: good ticks stay index-aligned with their records; bad ones become dead letters."""

from __future__ import annotations

import orjson
import pytest
from aiokafka.structs import ConsumerRecord

from mw_core.markets import codec
from mw_core.models import DeadLetter
from mw_core.processor.intake import decode_partition

pytestmark = pytest.mark.unit

NOW = 1_722_900_000_000
T0 = 1_722_816_059_999


def record(offset: int, value: bytes | None) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord("prices", 0, offset, T0 + offset, 0, b"BTCUSDT", value, None, 7, 0, ())


def good(k: int) -> bytes:
    return orjson.dumps({"symbol": "BTCUSDT", "price": 100.0 + k, "ts": T0 + k * 1000})


def test_all_good_keeps_the_records_list() -> None:
    records = [record(k, good(k)) for k in range(5)]
    dead: list[DeadLetter] = []
    ticks, kept = decode_partition(records, topic="prices", now_ms=NOW, max_price=1e9, dead=dead)
    assert kept is records and dead == []
    assert [t.price for t in ticks] == [100.0, 101.0, 102.0, 103.0, 104.0]


def test_bad_records_become_dead_letters_and_the_rest_stays_aligned() -> None:
    values = [
        good(0),
        b"{not json",
        good(2),
        None,
        orjson.dumps({"symbol": "BTCUSDT", "price": -1, "ts": T0}),
        good(5),
    ]
    records = [record(k, v) for k, v in enumerate(values)]
    dead: list[DeadLetter] = []
    ticks, kept = decode_partition(records, topic="prices", now_ms=NOW, max_price=1e9, dead=dead)
    assert [r.offset for r in kept] == [0, 2, 5]
    assert [t.ts for t in ticks] == [T0, T0 + 2000, T0 + 5000]  # tick i came from record kept[i]
    assert [d.reason for d in dead] == ["malformed_json", "empty", "bad_price"]
    assert [d.raw for d in dead] == [b"{not json", b"", values[4]]
    assert all(d.source == "prices" for d in dead)
    with pytest.raises(codec.BadMessage):
        codec.decode_tick(None, None, NOW)
