"""Volatility-aware thresholds: judge a window's return against the symbol's own recent behaviour.

Contract (the optional ``MW_SCORING=adaptive`` mode; the default ``fixed`` never builds one):
- Per symbol, the closes of completed 1-minute buckets (event time, ``ts // 60_000``; the close
  of a bucket is the last applied tick in it) are kept for ``lookback_s`` plus the longest
  window. For each window ``W`` (a whole number of minutes), every completed minute ``m``
  contributes one sample ``close[m] / close[m - W/60] - 1`` when both closes exist.
- The adaptive threshold of window ``W`` is ``max(floor, z * sigma_W)`` where ``sigma_W`` is the
  population standard deviation of the window's samples in the last ``lookback_s``, and
  ``floor`` is the fixed % threshold: symbols with tiny volatility never alert on noise. With
  fewer than ``min_samples`` samples the floor alone applies.
- Cost: O(1) amortized per tick (one integer division and compare; per completed minute, one
  append and at most a few evictions per window with running sums). Memory: bounded by
  ``lookback_s / 60`` samples per window.
- The same object is fed by the stream and the batch path (`analysis.Analyzer`), and it can be
  rebuilt from stored 1-minute closes (`load_closes`) after a restart.
- Pure: no I/O.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Sequence

__all__ = ["AdaptiveThresholds"]

MINUTE_MS = 60_000


class _Samples:
    __slots__ = ("lag", "n_sum", "q", "s1", "s2")

    def __init__(self, lag: int) -> None:
        self.lag = lag  # window length in minutes
        self.q: deque[tuple[int, float]] = deque()  # (minute, return)
        self.s1 = 0.0
        self.s2 = 0.0
        self.n_sum = 0


class AdaptiveThresholds:
    """One symbol's trailing distribution of window returns (see module docstring)."""

    __slots__ = (
        "_closes",
        "_cur_close",
        "_cur_min",
        "_horizon",
        "_lookback_min",
        "_min_samples",
        "_samples",
        "z",
    )

    def __init__(self, windows_s: Sequence[int], *, lookback_s: int, z: float, min_samples: int = 30) -> None:
        if z <= 0:
            raise ValueError(f"z must be > 0, got {z}")
        self.z = z
        self._lookback_min = max(1, lookback_s // 60)
        self._min_samples = min_samples
        self._samples = {w: _Samples(max(1, w // 60)) for w in windows_s}
        self._horizon = max(s.lag for s in self._samples.values()) + 1
        self._closes: dict[int, float] = {}  # minute -> close, the last `_horizon` minutes
        self._cur_min: int | None = None
        self._cur_close = 0.0

    def observe(self, ts: int, price: float) -> None:
        """Feed an applied tick (ascending `ts`); completes a minute when a new one starts."""
        minute = ts // MINUTE_MS
        cur = self._cur_min
        if cur is None or minute == cur:
            self._cur_min = minute
            self._cur_close = price
            return
        self._complete(cur, self._cur_close)
        self._cur_min = minute
        self._cur_close = price

    def load_closes(self, closes: Iterable[tuple[int, float]], *, before_ts: int) -> None:
        """Rebuild from stored 1-minute closes ``(minute_start_ms, close)`` before `before_ts`, ascending.

        The minute of `before_ts` itself is still in progress: its close so far becomes the
        current minute, exactly as if its ticks had been observed.
        """
        now_min = before_ts // MINUTE_MS
        for ts, close in closes:
            minute = ts // MINUTE_MS
            if minute >= now_min:
                self._cur_min, self._cur_close = minute, close
                break
            self._complete(minute, close)
            self._cur_min, self._cur_close = None, 0.0

    def _complete(self, minute: int, close: float) -> None:
        closes = self._closes
        closes[minute] = close
        stale = minute - self._horizon
        for m in [m for m in closes if m <= stale]:
            del closes[m]
        oldest = minute - self._lookback_min
        for s in self._samples.values():
            base = closes.get(minute - s.lag)
            if base is not None and base > 0:
                r = close / base - 1.0
                s.q.append((minute, r))
                s.s1 += r
                s.s2 += r * r
                s.n_sum += 1
            q = s.q
            while q and q[0][0] <= oldest:
                _, old = q.popleft()
                s.s1 -= old
                s.s2 -= old * old
            if not q:  # reset running sums: no drift accumulates across quiet gaps
                s.s1 = s.s2 = 0.0

    def sigma(self, window_s: int) -> float | None:
        """Standard deviation of the window's recent returns, None with too few samples."""
        s = self._samples.get(window_s)
        if s is None or len(s.q) < self._min_samples:
            return None
        n = len(s.q)
        mean = s.s1 / n
        var = max(0.0, s.s2 / n - mean * mean)
        return math.sqrt(var)

    def threshold(self, window_s: int, floor: float) -> float:
        """``max(floor, z * sigma)``: the fixed % threshold is the floor."""
        sd = self.sigma(window_s)
        if sd is None:
            return floor
        return max(floor, self.z * sd)
