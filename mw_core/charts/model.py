"""Plain records of the charts room: what builders take and return, what the repository reads.

Contract:
- Times are epoch milliseconds (UTC); prices are floats. A price series is a sequence of
  ``(ts_ms, price)`` pairs in ascending time (`Points`).
- `Chart` always carries a PNG (a text-only figure when the data could not be drawn); `reason`
  says why the picture is degraded (gap, single tick, no data) and is ``None`` for a full chart.
- No I/O, no matplotlib: the PostgreSQL repository imports this module.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

Point = tuple[int, float]
Points = Sequence[Point]


@dataclass(frozen=True, slots=True)
class Chart:
    """A rendered PNG and what it shows.

    Attributes:
        png: The PNG file's bytes.
        width: Pixel width of the PNG.
        height: Pixel height of the PNG.
        title: The chart's title (plain text).
        reason: Why the chart is degraded or text-only (``None`` when the data was drawn in full).
        render_ms: Wall time spent drawing and encoding.
    """

    png: bytes
    width: int
    height: int
    title: str
    reason: str | None = None
    render_ms: float = 0.0


@dataclass(frozen=True, slots=True)
class HeadlineMark:
    """A headline to mark on a chart: publication time, stored title, sentiment in [-1, 1]."""

    ts: int
    title: str
    sentiment: float
    symbols: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class OverviewRow:
    """One watched symbol in the market overview table (``None`` where there is no data)."""

    symbol: str
    last_price: float | None
    last_ts: int | None
    change_1h: float | None  # simple return over the last hour (0.01 = +1 %)
    change_24h: float | None
    volatility_24h: float | None  # std of 1-minute log returns over 24 h
    alerts_today: int  # open + escalate events since 00:00 UTC
    open_episode: str | None  # id of the symbol's open episode, if any


@dataclass(frozen=True, slots=True)
class MarketMetrics:
    """Market-wide numbers for the UI's plots: alerts in the last hour, ticks/s over 5 min, open episodes."""

    alerts_per_hour: int
    tick_rate: float
    open_episodes: int
