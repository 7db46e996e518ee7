"""Symbol tagging: names and tickers, whole words, case rules, configured symbols."""

from __future__ import annotations

import pytest

from mw_core.news.tagging import base_asset, tag_symbols

pytestmark = pytest.mark.unit

DEFAULT = ["BTCUSDT", "ETHUSDT", "SOLUSDT", "BNBUSDT", "XRPUSDT"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Bitcoin tops $60K", ("BTCUSDT",)),
        ("BITCOIN TOPS $60K", ("BTCUSDT",)),
        ("bitcoin's dominance and bitcoins", ("BTCUSDT",)),
        ("BTC/USDT breaks out; $BTC trends", ("BTCUSDT",)),
        ("Ethereum devs ship; Ether and ETH rise", ("ETHUSDT",)),
        ("Solana outage; SOL down", ("SOLUSDT",)),
        ("Binance Coin (BNB) steady", ("BNBUSDT",)),
        ("Ripple wins; XRP soars", ("XRPUSDT",)),
        ("Cardano ADA governance", ("ADAUSDT",)),
        ("Dogecoin and DOGE memes", ("DOGEUSDT",)),
        ("BTC, ETH and SOL lead", ("BTCUSDT", "ETHUSDT", "SOLUSDT")),
        ("Raw pair BNBUSDT listed", ("BNBUSDT",)),
    ],
)
def test_known_coins(text: str, expected: tuple[str, ...]) -> None:
    assert tag_symbols(text, DEFAULT) == expected


@pytest.mark.parametrize(
    "text",
    [
        "A new solution for consolidation",  # 'sol' inside words
        "The sol rises (lowercase ticker)",
        "Sol y sombra",  # short tickers are case-sensitive
        "Method adapts; readability counts",  # 'ada' inside words
        "BTCS shares and ETHE trust, XRPL ledger",  # ticker as prefix of a longer token
        "Whether or not, tethered assets",  # 'ether' inside words
        "The Solanaceae plant family",
        "",
    ],
)
def test_no_false_positives(text: str) -> None:
    assert tag_symbols(text, DEFAULT) == ()


def test_generic_configured_symbols() -> None:
    symbols = [*DEFAULT, "PEPEUSDT", "AVAXUSDT", "1000SATSUSDT", "RENDERFDUSD"]
    assert tag_symbols("PEPE and AVAX pump", symbols) == ("AVAXUSDT", "PEPEUSDT")
    assert tag_symbols("pepe in lowercase", symbols) == ()
    assert tag_symbols("1000SATS listing", symbols) == ("1000SATSUSDT",)
    # longer tickers are matched case-insensitively
    assert tag_symbols("Render network upgrade", symbols) == ("RENDERFDUSD",)
    # unconfigured generic tickers are not tagged
    assert tag_symbols("PEPE and AVAX pump", DEFAULT) == ()


def test_known_coins_are_tagged_even_when_not_configured() -> None:
    assert tag_symbols("Dogecoin jumps", ["BTCUSDT"]) == ("DOGEUSDT",)


def test_result_is_sorted_unique() -> None:
    out = tag_symbols("XRP BTC Bitcoin ETH BTC XRP", DEFAULT)
    assert out == ("BTCUSDT", "ETHUSDT", "XRPUSDT")
    assert list(out) == sorted(set(out))


@pytest.mark.parametrize(
    ("symbol", "base"),
    [
        ("BTCUSDT", "BTC"),
        ("ETHFDUSD", "ETH"),
        ("SOLEUR", "SOL"),
        ("USDT", None),
        ("XUSDT", None),
        ("ABCXYZ", None),
    ],
)
def test_base_asset(symbol: str, base: str | None) -> None:
    assert base_asset(symbol) == base
