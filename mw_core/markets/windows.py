"""Rolling event-time windows of one symbol: return, volatility and tick count per window.

Contract (for a window of ``W`` seconds, as of a tick at time ``now`` epoch ms):

- The window holds the ticks with ``now - W*1000 <= ts <= now`` (both ends inclusive).
- ``count`` is the number of those ticks (at least 1: the current tick).
- The *reference* is the oldest tick in the window (it may be the current tick itself, and
  then ``ret == 0.0``); ``ret = price / ref_price - 1``. `SymbolWindows.reference` returns it.
- ``volatility`` is the sample standard deviation (ddof=1) of the log returns
  ``log(p[j] / p[j-1])`` between consecutive ticks that are *both* in the window; None with
  fewer than two such returns.
- Ticks must arrive with strictly increasing ``ts`` (`update` raises `ValueError` otherwise);
  prices must be finite and positive.

Cost: O(1) amortized per tick and window, no rescans. All windows share one buffer of
timestamps, prices and log returns (list columns whose dead prefix is dropped once it is at
least half as long as the live part); every window keeps a start index that only moves
forward and sliding Welford moments (mean, M2) of its log returns. Rounding is kept in check
by an exact two-pass recomputation (`metrics.exact_moments`) of a window

- when its M2 has fallen below `CANCELLATION_RATIO` (1e-4) of its largest M2 since the last
  exact computation (a big return left the window; cancellation may have eaten the small
  remainder), and
- for all windows after every `RESYNC_EVICTIONS` ticks dropped from the buffer (slow drift).

A recomputation costs O(ticks in the window); the first kind needs M2 to shrink 1e4-fold
since the previous one, which real data almost never does and the float range only allows a
bounded number of times in a row. Volatility agrees with a two-pass computation to ~1e-11
relative (measured on adversarial random walks).

Memory: ~104 bytes per retained tick (list slots plus the int and float objects), at most
``max(1.5 * n, n + COMPACT_MIN)`` ticks for ``n`` ticks in the longest window.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Callable, Iterable, Sequence
from dataclasses import fields
from typing import Any

from mw_core.markets.window_math import exact_moments
from mw_core.models import WindowStats

__all__ = ["CANCELLATION_RATIO", "COMPACT_MIN", "RESYNC_EVICTIONS", "SymbolWindows"]

#: Recompute a window exactly when its M2 fell below this fraction of its peak since the last
#: exact computation: at most ~4 significant digits can have been lost to cancellation.
CANCELLATION_RATIO = 1e-4
#: Recompute every window exactly after this many ticks have left the buffer (drift guard).
RESYNC_EVICTIONS = 1 << 16
#: Compact the buffer once this many dead ticks (and at least half the live count) sit before
#: the longest window's reference tick.
COMPACT_MIN = 256

_NO_TS = -(1 << 63)
_INF = math.inf
_log = math.log
_sqrt = math.sqrt

# `WindowStats` is a frozen dataclass: its generated __init__ assigns every field through
# object.__setattr__, which costs about twice as much as calling the slot descriptors directly.
# On the per-tick hot path the instances are built through the descriptors, but only while the
# dataclass has exactly these fields and no __post_init__ (a unit test checks the equivalence);
# otherwise the regular constructor is used.
_STATS_FIELDS = ("window_s", "ret", "volatility", "count")
_Setter = Callable[[WindowStats, Any], None]


def _stats_setters() -> tuple[_Setter, _Setter, _Setter, _Setter] | None:
    if tuple(f.name for f in fields(WindowStats)) != _STATS_FIELDS or hasattr(WindowStats, "__post_init__"):
        return None
    w, r, v, c = (getattr(WindowStats, name).__set__ for name in _STATS_FIELDS)
    return w, r, v, c


_SETTERS = _stats_setters()
_new = object.__new__


class SymbolWindows:
    """Rolling event-time windows for ONE symbol over several window lengths.

    Example:
        >>> w = SymbolWindows([60, 300])
        >>> w.update(1_000, 100.0)[0].ret
        0.0
        >>> round(w.update(61_000, 102.0)[0].ret, 6)
        0.02
        >>> w.reference(0)
        (1000, 100.0)
    """

    __slots__ = ("_evicted", "_last_px", "_last_ts", "_longest", "_lrb", "_pxb", "_tsb", "_windows", "_wins")

    def __init__(self, windows_s: Sequence[int]) -> None:
        """Create empty windows.

        Args:
            windows_s: Window lengths in seconds (positive, distinct); `update` returns the
                statistics in this order.

        Raises:
            ValueError: No windows, a non-positive length or a duplicate.
        """
        windows = tuple(int(w) for w in windows_s)
        if not windows or any(w <= 0 for w in windows) or len(set(windows)) != len(windows):
            raise ValueError(f"window lengths must be distinct positive seconds, got {list(windows_s)!r}")
        self._windows = windows
        # Per window: (window_s, span_ms, state) with state = [start, mean, m2, peak]:
        # start = buffer index of the reference tick (only moves forward, shifted on compaction);
        # mean, m2 = Welford moments of the log returns lrb[start+1 .. end];
        # peak = the largest m2 since the last exact computation.
        self._wins: tuple[tuple[int, int, list[Any]], ...] = tuple(
            (w, w * 1000, [0, 0.0, 0.0, 0.0]) for w in windows
        )
        self._longest: list[Any] = self._wins[windows.index(max(windows))][2]
        # One shared buffer, three columns. Plain lists: reading them does not box a new object
        # per access (array('d') does), which is worth ~15% of `update`.
        self._tsb: list[int] = []  # tick times, epoch ms
        self._pxb: list[float] = []  # prices
        self._lrb: list[float] = []  # log return from the previous tick (0.0 for the first tick)
        self._last_ts = _NO_TS
        self._last_px = 0.0
        self._evicted = 0  # ticks dropped by compaction since the last full resync

    @property
    def windows_s(self) -> tuple[int, ...]:
        """The window lengths in seconds, in the order of `update`'s result."""
        return self._windows

    @property
    def newest_ts(self) -> int | None:
        """Time (epoch ms) of the newest tick, None before the first one."""
        return None if self._last_ts == _NO_TS else self._last_ts

    def __len__(self) -> int:
        """Number of ticks retained (those inside the longest window)."""
        return len(self._tsb) - int(self._longest[0])

    def reference(self, i: int) -> tuple[int, float]:
        """The reference tick ``(ts, price)`` of window `i` (an index into `windows_s`).

        This is the oldest tick inside the window as of the newest tick, i.e. the tick the
        ``ret`` of the latest `update` was measured against.

        Raises:
            LookupError: Before the first tick.
            IndexError: No window `i`.
        """
        if self._last_ts == _NO_TS:
            raise LookupError("no ticks yet")
        s: int = self._wins[i][2][0]
        return self._tsb[s], self._pxb[s]

    def update(self, ts: int, price: float) -> tuple[WindowStats, ...]:
        """Add a tick and return the statistics of every window as of this tick.

        Args:
            ts: Event time, epoch ms; strictly greater than `newest_ts`.
            price: Finite, positive price.

        Returns:
            One `WindowStats` per window, in the order of `windows_s`.

        Raises:
            ValueError: `ts` is not newer than `newest_ts`, or the price is not finite and
                positive. The state is unchanged then.
        """
        if ts <= self._last_ts:
            raise ValueError(f"tick at {ts} is not newer than the newest tick at {self._last_ts}")
        if not 0.0 < price < _INF:
            raise ValueError(f"price must be finite and positive, got {price!r}")
        tsb = self._tsb
        pxb = self._pxb
        lrb = self._lrb
        last_px = self._last_px
        x = _log(price / last_px) if last_px else 0.0
        tsb.append(ts)
        pxb.append(price)
        lrb.append(x)
        self._last_ts = ts
        self._last_px = price
        end = len(tsb) - 1
        setters = _SETTERS
        out: list[WindowStats] = []
        for w, span, st in self._wins:
            s, mean, m2, peak = st
            n = end - s  # log returns in the window, counting the new one
            if n:
                # The previous tick was inside the window as of its own update: add its return.
                d = x - mean
                mean += d / n
                m2 += d * (x - mean)
                if m2 > peak:
                    peak = m2
            cutoff = ts - span
            if tsb[s] < cutoff:
                s0 = s
                s += 1
                while tsb[s] < cutoff:
                    s += 1
                n = end - s
                if n < 2:
                    # Nothing or a single return left: restart the moments exactly.
                    mean = lrb[end] if n else 0.0
                    m2 = peak = 0.0
                else:
                    # Welford removal of the returns lrb[s0+1 .. s]; n_after = end - j.
                    if s == s0 + 1:  # the common case: one tick left the window
                        y = lrb[s]
                        d = y - mean
                        mean -= d / n
                        m2 -= d * (y - mean)
                    else:
                        for j in range(s0 + 1, s + 1):
                            y = lrb[j]
                            d = y - mean
                            mean -= d / (end - j)
                            m2 -= d * (y - mean)
                    if m2 < peak * CANCELLATION_RATIO:
                        _, mean, m2 = exact_moments(lrb[s + 1 : end + 1])
                        peak = m2
            st[0] = s
            st[1] = mean
            st[2] = m2
            st[3] = peak
            vol = (_sqrt(m2 / (n - 1)) if m2 > 0.0 else 0.0) if n > 1 else None
            if setters is None:
                out.append(WindowStats(w, price / pxb[s] - 1.0, vol, n + 1))
            else:
                o = _new(WindowStats)
                setters[0](o, w)
                setters[1](o, price / pxb[s] - 1.0)
                setters[2](o, vol)
                setters[3](o, n + 1)
                out.append(o)
        head: int = self._longest[0]
        if head >= COMPACT_MIN and head + head >= end - head:
            self._compact(head)
        return tuple(out)

    def load(self, ticks: Iterable[tuple[int, float]]) -> None:
        """Rehydrate from stored ticks, e.g. the last minutes from the database after a restart.

        Ticks at or before `newest_ts` (including out-of-order ones within `ticks`) are
        ignored. The resulting state is that of calling `update` on each remaining tick
        (with the moments computed exactly), without building the statistics.

        Args:
            ticks: ``(ts, price)`` pairs in ascending `ts` order.

        Raises:
            ValueError: A price is not finite and positive; nothing is loaded then.
        """
        last_ts = self._last_ts
        last_px = self._last_px
        new_ts: list[int] = []
        new_px: list[float] = []
        new_lr: list[float] = []
        for ts, price in ticks:
            if ts <= last_ts:
                continue
            if not 0.0 < price < _INF:
                raise ValueError(f"price must be finite and positive, got {price!r} at {ts}")
            new_lr.append(_log(price / last_px) if last_px else 0.0)
            new_ts.append(ts)
            new_px.append(price)
            last_ts = ts
            last_px = price
        if not new_ts:
            return
        tsb = self._tsb
        tsb.extend(new_ts)
        self._pxb.extend(new_px)
        self._lrb.extend(new_lr)
        self._last_ts = last_ts
        self._last_px = last_px
        for _, span, st in self._wins:
            st[0] = max(st[0], bisect_left(tsb, last_ts - span))
        head: int = self._longest[0]
        if head:
            self._compact(head)
        self._resync()

    def _compact(self, head: int) -> None:
        """Drop the `head` dead ticks before the longest window's reference tick."""
        del self._tsb[:head]
        del self._pxb[:head]
        del self._lrb[:head]
        for _, _, st in self._wins:
            st[0] -= head
        self._evicted += head
        if self._evicted >= RESYNC_EVICTIONS:
            self._resync()

    def _resync(self) -> None:
        """Recompute every window's moments exactly from the buffer."""
        self._evicted = 0
        end = len(self._tsb) - 1
        for _, _, st in self._wins:
            _, mean, m2 = exact_moments(self._lrb[st[0] + 1 : end + 1])
            st[1] = mean
            st[2] = st[3] = m2
