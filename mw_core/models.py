"""Domain records shared by ingest, processor, Dagster and the CLI.

Contract: immutable records (frozen, slotted dataclasses; `Tick` is a NamedTuple) of plain types. Timestamps are integer epoch
milliseconds (UTC) on the hot path (ticks, window math) and converted to timezone-aware
`datetime` only at the database / presentation edge (`ms_to_dt`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal, NamedTuple

Direction = Literal["up", "down"]
TickSource = Literal["ws", "rest_backfill", "replay", "external"]


def ms_to_dt(ms: int) -> datetime:
    """Epoch milliseconds -> timezone-aware UTC datetime."""
    return datetime.fromtimestamp(ms / 1000.0, tz=UTC)


def dt_to_ms(dt: datetime) -> int:
    """Timezone-aware datetime -> epoch milliseconds."""
    if dt.tzinfo is None:
        raise ValueError("naive datetime: timestamps must be timezone-aware UTC")
    return round(dt.timestamp() * 1000)


class Tick(NamedTuple):
    """One price observation of one symbol at exchange event time `ts` (epoch ms).

    An immutable NamedTuple rather than a frozen dataclass: it is created once per tick on the
    processor's hot path, where tuple construction is ~4x cheaper.
    """

    symbol: str
    ts: int
    price: float
    open: float | None = None
    high: float | None = None
    low: float | None = None
    base_volume: float | None = None
    quote_volume: float | None = None
    source: str = "ws"


@dataclass(frozen=True, slots=True)
class WindowStats:
    """Rolling statistics of one symbol over one window, as of tick time `ts`."""

    window_s: int
    ret: float | None  # simple return vs. the reference tick, None until the window has a reference
    volatility: float | None  # std of log returns inside the window, None with < 2 returns
    count: int


@dataclass(frozen=True, slots=True)
class Anomaly:
    """A detected abnormal move: |ret| over `window_s` >= threshold at tick time `ts`."""

    symbol: str
    ts: int
    window_s: int
    ret: float
    direction: Direction
    price: float
    threshold: float
    volatility: float | None = None
    ref_price: float | None = None
    ref_ts: int | None = None

    @property
    def key(self) -> tuple[str, int, int]:
        """Natural key: one anomaly per (symbol, ts, window)."""
        return (self.symbol, self.ts, self.window_s)


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A record that could not be processed, with the reason (goes to the `dlq` topic)."""

    reason: str
    source: str  # e.g. "prices", "binance-ws", "rss:<url>"
    raw: bytes
    detail: str = ""
