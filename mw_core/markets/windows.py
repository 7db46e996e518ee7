"""Rolling event-time windows of one symbol: return, volatility and tick count per window.

Contract (for a window of ``W`` seconds, as of a tick at time ``now`` epoch ms):

- The window holds the ticks with ``now - W*1000 <= ts <= now`` (both ends inclusive).
- ``count`` is the number of those ticks (at least 1: the current tick).
- The *reference* is the oldest tick in the window (it may be the current tick itself, and
  then ``ret == 0.0``); ``ret = price / ref_price - 1``. `SymbolWindows.reference` returns it.
- ``volatility`` is the sample standard deviation (ddof=1) of the log returns
  ``log(p[j] / p[j-1])`` between consecutive ticks that are *both* in the window; None with
  fewer than two such returns.
- Ticks must arrive with strictly increasing ``ts`` (`advance` / `update` raise `ValueError`
  otherwise); prices must be finite and positive.

Two speeds. The hot path, `advance`, appends the tick, moves each window's reference forward
and returns the windows' returns: nothing else, because the stream needs only the returns for
most ticks. Everything else is computed on demand, as of the newest tick:

- `stats` gives the full `WindowStats` (the processor asks once per symbol per batch for the
  ``metrics`` rows). Volatility comes from sliding Welford moments (mean, M2) per window that
  are caught up lazily: the log returns that entered since the last request are added, those
  that left are removed, in one tight loop. Rounding is kept in check by an exact two-pass
  recomputation (`window_math.exact_moments`) of a window when its M2 fell below
  `CANCELLATION_RATIO` (1e-4) of its largest M2 since the last exact computation (a big return
  left the window), when every return it held has left, and for all windows after every
  `RESYNC_EVICTIONS` ticks dropped from the buffer (slow drift). Agrees with a two-pass
  computation to ~1e-11 relative.
- `volatility(i)` is the exact two-pass value of window ``i`` (O(ticks in the window)): what an
  anomaly carries, so that the stream and the batch path, which ask `stats` at different
  times, agree bit for bit.
- `update` = `advance` + `stats` (tests, tools; not the hot path).

Cost: `advance` is O(1) amortized per tick and window (a start index that only moves forward,
no rescans); `stats` is O(ticks since the previous request) per window. All windows share one
buffer of timestamps and prices (plain lists whose dead prefix is dropped once it is at least
half as long as the live part); log returns are filled in lazily by `stats` / `volatility`.

Memory: ~104 bytes per retained tick (list slots plus the int and float objects), at most
``max(1.5 * n, n + COMPACT_MIN)`` ticks for ``n`` ticks in the longest window.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Iterable, Sequence
from operator import truediv

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


class SymbolWindows:
    """Rolling event-time windows for ONE symbol over several window lengths.

    Example:
        >>> w = SymbolWindows([60, 300])
        >>> w.advance(1_000, 100.0)
        [0.0, 0.0]
        >>> [round(r, 6) for r in w.advance(61_000, 102.0)]
        [0.02, 0.02]
        >>> w.reference(0), w.stats()[0].count
        ((1000, 100.0), 2)
    """

    __slots__ = (
        "_evicted",
        "_longest",
        "_lrb",
        "_mom",
        "_pxb",
        "_spans",
        "_starts",
        "_tsb",
        "_windows",
        "last_ts",
    )

    def __init__(self, windows_s: Sequence[int]) -> None:
        """Create empty windows.

        Args:
            windows_s: Window lengths in seconds (positive, distinct); results come in this order.

        Raises:
            ValueError: No windows, a non-positive length or a duplicate.
        """
        windows = tuple(int(w) for w in windows_s)
        if not windows or any(w <= 0 for w in windows) or len(set(windows)) != len(windows):
            raise ValueError(f"window lengths must be distinct positive seconds, got {list(windows_s)!r}")
        self._windows = windows
        self._spans = tuple((i, w * 1000) for i, w in enumerate(windows))
        # Buffer index of each window's reference tick (only moves forward, shifted on compaction).
        self._starts = [0] * len(windows)
        self._longest = windows.index(max(windows))
        # Per window, the lazily caught-up moments [a, b, mean, m2, peak]: Welford mean and M2 of
        # the log returns lrb[a+1 .. b] (the window as of the previous request); peak = the
        # largest M2 since the last exact computation; a == -1: nothing kept (compute exactly).
        self._mom: list[list[float]] = [[-1, 0, 0.0, 0.0, 0.0] for _ in windows]
        # One shared buffer. Plain lists: reading them does not box a new object per access
        # (array('d') does). `_lrb` (log return from the previous tick) lags behind: filled up to
        # the newest tick only when statistics are asked for.
        self._tsb: list[int] = []  # tick times, epoch ms
        self._pxb: list[float] = []  # prices
        self._lrb: list[float] = []
        #: Time (epoch ms) of the newest tick; a very negative sentinel before the first one.
        self.last_ts = _NO_TS
        self._evicted = 0  # ticks dropped by compaction since the last full resync

    @property
    def windows_s(self) -> tuple[int, ...]:
        """The window lengths in seconds, in the order of every result."""
        return self._windows

    @property
    def newest_ts(self) -> int | None:
        """Time (epoch ms) of the newest tick, None before the first one."""
        return None if self.last_ts == _NO_TS else self.last_ts

    def __len__(self) -> int:
        """Number of ticks retained (those inside the longest window)."""
        return len(self._tsb) - self._starts[self._longest]

    def reference(self, i: int) -> tuple[int, float]:
        """The reference tick ``(ts, price)`` of window `i` (an index into `windows_s`).

        This is the oldest tick inside the window as of the newest tick, i.e. the tick the
        newest return of that window was measured against.

        Raises:
            LookupError: Before the first tick.
            IndexError: No window `i`.
        """
        if self.last_ts == _NO_TS:
            raise LookupError("no ticks yet")
        s = self._starts[i]
        return self._tsb[s], self._pxb[s]

    def advance(self, ts: int, price: float) -> list[float]:
        """Add a tick and return each window's return ``price / ref_price - 1`` (the hot path).

        Args:
            ts: Event time, epoch ms; strictly greater than `newest_ts`.
            price: Finite, positive price.

        Returns:
            One return per window, in the order of `windows_s` (a new list).

        Raises:
            ValueError: `ts` is not newer than `newest_ts`, or the price is not finite and
                positive. The state is unchanged then.
        """
        if ts <= self.last_ts:
            raise ValueError(f"tick at {ts} is not newer than the newest tick at {self.last_ts}")
        if not 0.0 < price < _INF:
            raise ValueError(f"price must be finite and positive, got {price!r}")
        tsb = self._tsb
        pxb = self._pxb
        tsb.append(ts)
        pxb.append(price)
        self.last_ts = ts
        starts = self._starts
        rets: list[float] = []
        add = rets.append
        for i, span in self._spans:
            s = starts[i]
            cutoff = ts - span
            if tsb[s] < cutoff:
                s += 1
                while tsb[s] < cutoff:  # stops at the newest tick at the latest
                    s += 1
                starts[i] = s
            add(price / pxb[s] - 1.0)
        head = starts[self._longest]
        if head >= COMPACT_MIN and head + head >= len(tsb) - 1 - head:
            self._compact(head)
        return rets

    def update(self, ts: int, price: float) -> tuple[WindowStats, ...]:
        """`advance`, then `stats`: every window's statistics as of this tick (not the hot path)."""
        self.advance(ts, price)
        return self.stats()

    def stats(self) -> tuple[WindowStats, ...]:
        """Every window's statistics as of the newest tick, in the order of `windows_s`.

        Raises:
            LookupError: Before the first tick.
        """
        if self.last_ts == _NO_TS:
            raise LookupError("no ticks yet")
        end = len(self._tsb) - 1
        lrb = self._returns(end)
        pxb = self._pxb
        price = pxb[end]
        out = []
        for i, w in enumerate(self._windows):
            s = self._starts[i]
            n = end - s  # log returns inside the window
            vol = self._catch_up(i, s, end, lrb) if n > 1 else None
            out.append(WindowStats(w, price / pxb[s] - 1.0, vol, n + 1))
        return tuple(out)

    def volatility(self, i: int) -> float | None:
        """Window `i`'s volatility as of the newest tick, computed exactly (two-pass).

        Depends only on the ticks in the window, never on when `stats` was asked for.
        """
        end = len(self._tsb) - 1
        s = self._starts[i]
        n = end - s
        if n < 2:
            return None
        _, _, m2 = exact_moments(self._returns(end)[s + 1 : end + 1])
        return _sqrt(m2 / (n - 1)) if m2 > 0.0 else 0.0

    def _returns(self, end: int) -> list[float]:
        """The log-return column, filled up to buffer index `end`."""
        lrb = self._lrb
        k = len(lrb)
        if k <= end:
            pxb = self._pxb
            if k == 0:
                lrb.append(0.0)  # the first tick's (or, after compaction, an unused) slot
                k = 1
            lrb.extend(map(_log, map(truediv, pxb[k : end + 1], pxb[k - 1 : end])))
        return lrb

    def _catch_up(self, i: int, s: int, end: int, lrb: list[float]) -> float:
        """Bring window `i`'s moments to lrb[s+1 .. end] (at least two returns); its volatility."""
        mom = self._mom[i]
        a = int(mom[0])
        b = int(mom[1])
        if a < 0 or s >= b:
            # Nothing kept, or every return the moments held has left: start exactly.
            _, mean, m2 = exact_moments(lrb[s + 1 : end + 1])
            peak = m2
        else:
            mean, m2, peak = mom[2], mom[3], mom[4]
            k = b - a
            for j in range(b + 1, end + 1):  # returns that entered; M2 never shrinks on adding
                k += 1
                y = lrb[j]
                d = y - mean
                mean += d / k
                m2 += d * (y - mean)
            if m2 > peak:
                peak = m2
            for j in range(a + 1, s + 1):  # returns that left; end - j of them remain
                y = lrb[j]
                d = y - mean
                mean -= d / (end - j)
                m2 -= d * (y - mean)
            if s > a and m2 < peak * CANCELLATION_RATIO:
                # A big return left: cancellation may have eaten the small remainder.
                _, mean, m2 = exact_moments(lrb[s + 1 : end + 1])
                peak = m2
        mom[0] = s
        mom[1] = end
        mom[2] = mean
        mom[3] = m2
        mom[4] = peak
        return _sqrt(m2 / (end - s - 1)) if m2 > 0.0 else 0.0

    def load(self, ticks: Iterable[tuple[int, float]]) -> None:
        """Rehydrate from stored ticks, e.g. the last minutes from the database after a restart.

        Ticks at or before `newest_ts` (including out-of-order ones within `ticks`) are
        ignored. The resulting state is that of calling `advance` on each remaining tick.

        Args:
            ticks: ``(ts, price)`` pairs in ascending `ts` order.

        Raises:
            ValueError: A price is not finite and positive; nothing is loaded then.
        """
        last_ts = self.last_ts
        new_ts: list[int] = []
        new_px: list[float] = []
        for ts, price in ticks:
            if ts <= last_ts:
                continue
            if not 0.0 < price < _INF:
                raise ValueError(f"price must be finite and positive, got {price!r} at {ts}")
            new_ts.append(ts)
            new_px.append(price)
            last_ts = ts
        if not new_ts:
            return
        tsb = self._tsb
        tsb.extend(new_ts)
        self._pxb.extend(new_px)
        self.last_ts = last_ts
        for i, span in self._spans:
            self._starts[i] = max(self._starts[i], bisect_left(tsb, last_ts - span))
        head = self._starts[self._longest]
        if head:
            self._compact(head)
        self._resync()

    def _compact(self, head: int) -> None:
        """Drop the `head` dead ticks before the longest window's reference tick."""
        del self._tsb[:head]
        del self._pxb[:head]
        del self._lrb[:head]  # may be shorter: then it restarts at the new index 0
        starts = self._starts
        for i in range(len(starts)):
            starts[i] -= head
        for mom in self._mom:
            mom[0] -= head
            mom[1] -= head
            if mom[0] < 0:
                mom[0] = -1  # the returns it would have to remove are gone
        self._evicted += head
        if self._evicted >= RESYNC_EVICTIONS:
            self._resync()

    def _resync(self) -> None:
        """Forget every window's running moments: the next request computes them exactly."""
        self._evicted = 0
        for mom in self._mom:
            mom[0] = -1
