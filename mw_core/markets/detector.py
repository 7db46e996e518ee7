"""Anomaly rules: which window moved abnormally, and at most one alert per symbol per cooldown.

Contract:
- A window is *abnormal* at a tick when ``abs(ret) >= threshold_for(symbol, window_s)``.
- Among abnormal windows the one with the largest ``abs(ret) / threshold`` wins; on a tie the
  shortest window wins.
- Cooldown is in event time: after an alert at ``t0`` the symbol cannot alert again while
  ``ts - t0 < cooldown_s * 1000``. A tick exactly ``cooldown_s`` after the alert may alert again.
  Suppressed ticks do not extend the cooldown. ``cooldown_s == 0`` disables it.
- `mw_core.markets.analysis.Analyzer` runs `SymbolWindows` + `AnomalyDetector` for the streaming
  processor, the Dagster batch path and `mw backtest` alike
  (``rets = windows.advance(ts, price)`` then ``detector.check(..., rets, windows=windows)``), so
  the same ticks with the same warm-up and cooldown state give the same anomalies.
- With ``windows=`` (the `SymbolWindows` that produced `rets`) an anomaly carries the window's
  exact reference tick (``ref_ts``/``ref_price``) and its exact volatility; without it
  ``ref_price`` is derived as ``price / (1 + ret)`` and ``ref_ts`` / ``volatility`` are None.
- The hot path: most ticks are in cooldown or below every threshold; both are decided with a
  dict lookup and two comparisons against the symbol's smallest threshold (adaptive thresholds
  are never below the fixed ones, so that bound holds in both scoring modes).
- Pure: no I/O. ``threshold_for`` must be pure; its result is cached per (symbol, window).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from mw_core.markets.volatility import AdaptiveThresholds
from mw_core.markets.windows import SymbolWindows
from mw_core.models import Anomaly

__all__ = ["AnomalyDetector"]


class AnomalyDetector:
    """Applies the threshold and cooldown rules to the window returns of each tick.

    Example:
        >>> det = AnomalyDetector(windows_s=[60], threshold_for=lambda symbol, w: 0.02, cooldown_s=60)
        >>> a = det.check("BTCUSDT", 60_000, 97.0, [-0.03])
        >>> (a.window_s, a.direction, round(a.ref_price, 6))
        (60, 'down', 100.0)
        >>> det.check("BTCUSDT", 61_000, 96.0, [-0.04]) is None
        True
    """

    __slots__ = ("_cooldown_ms", "_last", "_threshold_for", "_thresholds", "windows_s")

    def __init__(
        self, *, windows_s: Sequence[int], threshold_for: Callable[[str, int], float], cooldown_s: int
    ) -> None:
        """Create a detector with no alert history.

        Args:
            windows_s: The window lengths, in the order of the returns `check` gets.
            threshold_for: ``(symbol, window_s) -> threshold`` as a fraction (0.02 = 2 %),
                e.g. `Settings.threshold_for`. Must be pure: results are cached.
            cooldown_s: Minimum event-time distance between two alerts of one symbol.

        Raises:
            ValueError: Negative `cooldown_s`.
        """
        if cooldown_s < 0:
            raise ValueError(f"cooldown_s must be >= 0, got {cooldown_s}")
        self.windows_s = tuple(int(w) for w in windows_s)
        self._threshold_for = threshold_for
        self._cooldown_ms = cooldown_s * 1000
        self._last: dict[str, int] = {}
        # symbol -> (smallest threshold, thresholds in the order of windows_s)
        self._thresholds: dict[str, tuple[float, tuple[float, ...]]] = {}

    def threshold(self, symbol: str, window_s: int) -> float:
        """The (cached) threshold of `symbol` over `window_s`.

        Raises:
            ValueError: `threshold_for` returned a non-positive or non-finite value.
        """
        if window_s in self.windows_s:
            return self._table(symbol)[1][self.windows_s.index(window_s)]
        return self._checked(symbol, window_s)

    def _checked(self, symbol: str, window_s: int) -> float:
        t = float(self._threshold_for(symbol, window_s))
        if not 0.0 < t < float("inf"):
            raise ValueError(f"threshold for {symbol} over {window_s}s must be positive, got {t!r}")
        return t

    def _table(self, symbol: str) -> tuple[float, tuple[float, ...]]:
        table = self._thresholds.get(symbol)
        if table is None:
            ts = tuple(self._checked(symbol, w) for w in self.windows_s)
            table = self._thresholds[symbol] = (min(ts), ts)
        return table

    def check(
        self,
        symbol: str,
        ts: int,
        price: float,
        rets: Sequence[float],
        windows: SymbolWindows | None = None,
        *,
        adaptive: AdaptiveThresholds | None = None,
    ) -> Anomaly | None:
        """Decide whether the tick at `ts` is an anomaly, and record it if so.

        Args:
            symbol: The tick's symbol.
            ts: Tick time, epoch ms.
            price: Tick price.
            rets: The tick's window returns in the order of `windows_s`
                (`SymbolWindows.advance`'s result).
            windows: The `SymbolWindows` that produced `rets`: exact reference tick and volatility.
            adaptive: The symbol's volatility baseline in ``adaptive`` scoring mode: the threshold
                of each window becomes ``max(fixed, z * sigma)`` (`AdaptiveThresholds.threshold`).

        Returns:
            The `Anomaly` of the winning window, or None (no abnormal window, or cooldown).
        """
        last = self._last.get(symbol)
        if last is not None and ts - last < self._cooldown_ms:
            return None
        table = self._thresholds.get(symbol)
        if table is None:
            table = self._table(symbol)
        floor, thresholds = table
        for r in rets:  # a plain loop: ~3x cheaper than max() + min() over a few floats
            if r >= floor or r <= -floor:
                break
        else:
            return None  # below every threshold (adaptive ones are never lower)
        windows_s = self.windows_s
        best = -1
        best_score = 0.0
        best_threshold = 0.0
        for i, ret in enumerate(rets):
            t = thresholds[i]
            if adaptive is not None:
                t = adaptive.threshold(windows_s[i], t)
            a = abs(ret)
            if a >= t:
                score = a / t
                if best < 0 or score > best_score or (score == best_score and windows_s[i] < windows_s[best]):
                    best = i
                    best_score = score
                    best_threshold = t
        if best < 0:
            return None
        best_ret = rets[best]
        ref_ts: int | None
        ref_price: float | None
        volatility: float | None
        if windows is not None:
            ref_ts, ref_price = windows.reference(best)
            volatility = windows.volatility(best)
        else:
            # ret <= -1 cannot come from positive prices, but returns may be hand-made.
            ref_ts, ref_price = None, (price / (1.0 + best_ret) if best_ret > -1.0 else None)
            volatility = None
        self._last[symbol] = ts
        return Anomaly(
            symbol=symbol,
            ts=ts,
            window_s=windows_s[best],
            ret=best_ret,
            direction="up" if best_ret > 0 else "down",
            price=price,
            threshold=best_threshold,
            volatility=volatility,
            ref_price=ref_price,
            ref_ts=ref_ts,
        )

    def seed_cooldown(self, symbol: str, last_alert_ts: int) -> None:
        """Restore the last alert time of `symbol` (e.g. from the database after a restart).

        An older time than the one already known is ignored.
        """
        known = self._last.get(symbol)
        if known is None or last_alert_ts > known:
            self._last[symbol] = last_alert_ts

    def last_alert(self, symbol: str) -> int | None:
        """Event time (epoch ms) of the last alert of `symbol`, None if it never alerted."""
        return self._last.get(symbol)
