"""Pure helpers of the Binance websocket client: stream URL, de-duplication, gap detection."""

from __future__ import annotations

import pytest

from mw_core.ingest.client import Deduper, kline_closed_between, stream_url

pytestmark = pytest.mark.unit


def test_stream_url() -> None:
    assert (
        stream_url("wss://stream.binance.com:9443/", ["BTCUSDT", "ETHUSDT"])
        == "wss://stream.binance.com:9443/stream?streams=btcusdt@miniTicker/ethusdt@miniTicker"
    )


def test_deduper_drops_repeats_and_forgets_oldest() -> None:
    d = Deduper(per_symbol=3)
    assert [d.accept("A", t) for t in (1, 2, 1, 3)] == [True, True, False, True]
    assert d.accept("B", 1) is True
    assert d.accept("A", 4) is True  # evicts 1
    assert d.accept("A", 1) is True and d.accept("A", 4) is False
    assert d.newest == {"A": 4, "B": 1}


@pytest.mark.parametrize(
    ("after", "before", "expected"),
    [
        (1722816059999, 1722816119999, False),  # consecutive kline closes: nothing in between
        (1722816059999, 1722816179999, True),  # one close (…119999) missed
        (1722816061000, 1722816119998, False),
        (1722816061000, 1722816120500, True),
        (1722816119999, 1722816119999, False),
    ],
)
def test_kline_closed_between(after: int, before: int, expected: bool) -> None:
    assert kline_closed_between(after, before) is expected
