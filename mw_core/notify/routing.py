"""Pure parsing of `MW_NOTIFY_URLS` into channel specs with routing filters.

Syntax (one variable, channels separated by commas)::

    MW_NOTIFY_URLS=[symbols=BTCUSDT|ETHUSDT;kinds=open|escalate;min_move=0.05]slack://T1/B2/tok,
                   mailto://user:pw@mail.example.com?to=a@example.com,b@example.com,
                   [kinds=open|escalate|close|summary]ntfys://ntfy.sh/my-topic

- A channel is an Apprise URL, optionally preceded by a routing prefix in square brackets:
  ``key=value`` pairs separated by ``;``, list values separated by ``|``.
  - ``symbols``: only these symbols (default: all).
  - ``kinds``: event kinds among ``open``, ``escalate``, ``close`` and ``summary`` (the LLM
    follow-up of an alert); default: all four.
  - ``min_move``: only events whose ``|ret|`` reaches this fraction (``0.05`` = 5 %); a
    follow-up has no move of its own and goes where its alert went.
- A comma starts a new channel only when what follows (after spaces) is ``[`` or a URL scheme
  (``name://``). Commas inside a URL (``to=a@x,b@y``, Telegram chat lists) therefore stay in it.
- Unknown keys, unknown kinds, a bad number or an unclosed ``[`` raise `RoutingError`, whose
  message never contains the URL (it carries tokens).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

KINDS = frozenset({"open", "escalate", "close", "summary"})
# A comma followed by a routing prefix or a URL scheme separates two channels.
_CHANNEL_SPLIT = re.compile(r",\s*(?=\[|[A-Za-z][A-Za-z0-9+.\-]*://)")
_PREFIX = re.compile(r"^\[(?P<filters>[^\]]*)\](?P<url>.*)$", re.S)


class RoutingError(ValueError):
    """`MW_NOTIFY_URLS` is malformed; the message names the channel by position, never by URL."""


@dataclass(frozen=True, slots=True)
class Route:
    """Which events a channel receives. Empty `symbols` = every symbol."""

    symbols: frozenset[str] = frozenset()
    kinds: frozenset[str] = KINDS
    min_move: float = 0.0

    def accepts(self, *, symbol: str, kind: str, ret: float | None) -> bool:
        """True when an event of `symbol` / `kind` with return `ret` goes to this channel.

        `ret` None (a follow-up) skips the `min_move` test: follow-ups go where their alert went.
        """
        if self.symbols and symbol not in self.symbols:
            return False
        if kind not in self.kinds:
            return False
        return ret is None or abs(ret) >= self.min_move


@dataclass(frozen=True, slots=True)
class ChannelSpec:
    """One configured channel: its URL (a secret) and its route."""

    url: str
    route: Route = Route()


def split_channels(raw: str) -> list[str]:
    """Split the variable into channel strings (see the module docstring for the comma rule)."""
    return [part.strip() for part in _CHANNEL_SPLIT.split(raw) if part.strip()]


def _values(value: str) -> list[str]:
    return [v.strip() for v in value.split("|") if v.strip()]


def parse_route(filters: str, *, position: int) -> Route:
    """Parse the text between ``[`` and ``]`` (``symbols=A|B;kinds=open;min_move=0.05``)."""
    symbols: frozenset[str] = frozenset()
    kinds = KINDS
    min_move = 0.0
    for item in filters.split(";"):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        key = key.strip().lower()
        if not sep:
            raise RoutingError(f"channel {position}: routing filter {key!r} needs a value (key=value)")
        if key == "symbols":
            symbols = frozenset(v.upper() for v in _values(value))
        elif key == "kinds":
            wanted = {v.lower() for v in _values(value)}
            unknown = sorted(wanted - KINDS)
            if unknown:
                raise RoutingError(f"channel {position}: unknown kind(s) {unknown}; use {sorted(KINDS)}")
            kinds = frozenset(wanted)
        elif key == "min_move":
            try:
                min_move = float(value)
            except ValueError:
                raise RoutingError(f"channel {position}: min_move must be a number") from None
            if not 0 <= min_move < 10:
                raise RoutingError(f"channel {position}: min_move must be a fraction in [0, 10)")
        else:
            raise RoutingError(f"channel {position}: unknown routing filter {key!r}")
    return Route(symbols=symbols, kinds=kinds, min_move=min_move)


def parse_channel(text: str, *, position: int) -> ChannelSpec:
    """One channel string -> `ChannelSpec` (routing prefix optional)."""
    text = text.strip()
    if text.startswith("["):
        match = _PREFIX.match(text)
        if match is None:
            raise RoutingError(f"channel {position}: routing prefix '[' is not closed by ']'")
        url = match.group("url").strip()
        route = parse_route(match.group("filters"), position=position)
    else:
        url, route = text, Route()
    if "://" not in url:
        raise RoutingError(f"channel {position}: not a URL (expected scheme://...)")
    return ChannelSpec(url=url, route=route)


def parse_channels(raw: str | None) -> list[ChannelSpec]:
    """Parse `MW_NOTIFY_URLS` (None or blank: no channels). Positions in errors are 1-based."""
    if raw is None or not raw.strip():
        return []
    return [parse_channel(part, position=i) for i, part in enumerate(split_channels(raw), start=1)]


def describe(route: Route) -> str:
    """Short human text of a route for tables (``all`` when it accepts everything)."""
    parts: list[str] = []
    if route.symbols:
        parts.append("symbols=" + "|".join(sorted(route.symbols)))
    if route.kinds != KINDS:
        parts.append("kinds=" + "|".join(sorted(route.kinds)))
    if route.min_move:
        parts.append(f"min_move={route.min_move:g}")
    return ";".join(parts) or "all"
