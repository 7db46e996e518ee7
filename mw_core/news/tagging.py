"""Pure symbol tagging: which watched trading pairs a headline talks about.

Contract:
- Known coins are recognised by name (case-insensitive: "Bitcoin", "ETHEREUM", "Binance Coin")
  and by ticker (case-sensitive: "BTC", "$ETH", "SOL/USDT"), always as whole words, and map to
  their USDT pair (``BTCUSDT``, ...) whether or not that pair is configured.
- Every configured symbol ``<BASE><QUOTE>`` with a known quote asset (USDT, USDC, FDUSD, ...) also
  matches its base ticker as a whole word and the full symbol itself. Tickers of up to 5
  characters are case-sensitive, so "sol" in "solution" or "Sol" in a Spanish title do not
  count; longer ones are case-insensitive.
- The result is a sorted tuple of unique symbols.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from functools import lru_cache

# Symbol -> (names: case-insensitive, tickers: case-sensitive).
KNOWN_COINS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "BTCUSDT": (("Bitcoin",), ("BTC", "XBT")),
    "ETHUSDT": (("Ethereum", "Ether"), ("ETH",)),
    "SOLUSDT": (("Solana",), ("SOL",)),
    "BNBUSDT": (("Binance Coin", "BNB Chain"), ("BNB",)),
    "XRPUSDT": (("Ripple",), ("XRP",)),
    "ADAUSDT": (("Cardano",), ("ADA",)),
    "DOGEUSDT": (("Dogecoin",), ("DOGE",)),
}
QUOTE_ASSETS = ("FDUSD", "USDT", "USDC", "BUSD", "TUSD", "EUR", "TRY", "BRL")
CASE_SENSITIVE_MAX = 5

# Letters/digits on either side mean "part of another word"; "$BTC", "BTC/USDT", "Bitcoin's" match.
_LEFT = r"(?<![A-Za-z0-9])"
_RIGHT = r"(?![A-Za-z0-9])"


def base_asset(symbol: str) -> str | None:
    """``"SOLUSDT"`` -> ``"SOL"``; ``None`` when the quote asset is unknown or the base too short."""
    for quote in QUOTE_ASSETS:
        if symbol.endswith(quote) and len(symbol) - len(quote) >= 2:
            return symbol[: -len(quote)]
    return None


def _words(words: Iterable[str], *, plural: bool = False) -> str:
    # Longest first so "Binance Coin" wins over a shorter alternative; inner spaces match any run.
    alts = sorted({re.escape(w).replace(r"\ ", r"\s+") for w in words}, key=len, reverse=True)
    suffix = "s?" if plural else ""
    return _LEFT + "(?:" + "|".join(alts) + ")" + suffix + _RIGHT


@lru_cache(maxsize=64)
def _matchers(symbols: tuple[str, ...]) -> tuple[tuple[str, re.Pattern[str]], ...]:
    sensitive: dict[str, set[str]] = {}
    insensitive: dict[str, set[str]] = {}
    names: dict[str, set[str]] = {}
    for symbol, (coin_names, tickers) in KNOWN_COINS.items():
        names.setdefault(symbol, set()).update(coin_names)
        sensitive.setdefault(symbol, set()).update(tickers)
    for symbol in symbols:
        base = base_asset(symbol)
        sensitive.setdefault(symbol, set()).add(symbol)
        if base is None:
            continue
        target = sensitive if len(base) <= CASE_SENSITIVE_MAX else insensitive
        target.setdefault(symbol, set()).add(base)
    out: list[tuple[str, re.Pattern[str]]] = []
    for symbol in sorted(set(sensitive) | set(insensitive) | set(names)):
        if symbol in sensitive:
            out.append((symbol, re.compile(_words(sensitive[symbol]))))
        if symbol in insensitive:
            out.append((symbol, re.compile(_words(insensitive[symbol]), re.IGNORECASE)))
        if symbol in names:
            out.append((symbol, re.compile(_words(names[symbol], plural=True), re.IGNORECASE)))
    return tuple(out)


def tag_symbols(text: str, symbols: Sequence[str] = ()) -> tuple[str, ...]:
    """Symbols mentioned in `text`, as a sorted tuple of unique symbols.

    Args:
        text: Title and/or summary (plain text).
        symbols: The configured symbols (``Settings.symbols``), e.g. ``["BTCUSDT", "PEPEUSDT"]``.

    Example:
        >>> tag_symbols("Bitcoin slips while $SOL and PEPE rally; a solution for ether?", ["PEPEUSDT"])
        ('BTCUSDT', 'ETHUSDT', 'PEPEUSDT', 'SOLUSDT')
    """
    if not text:
        return ()
    found = {symbol for symbol, pattern in _matchers(tuple(symbols)) if pattern.search(text)}
    return tuple(sorted(found))
