"""Anomaly rules: which window moved abnormally, and at most one alert per symbol per cooldown.

Contract:
- A window is *abnormal* at a tick when its ``ret`` is not None and
  ``abs(ret) >= threshold_for(symbol, window_s)``.
- Among abnormal windows the one with the largest ``abs(ret) / threshold`` wins; on a tie the
  shortest window wins.
- Cooldown is in event time: after an alert at ``t0`` the symbol cannot alert again while
  ``ts - t0 < cooldown_s * 1000``. A tick exactly ``cooldown_s`` after the alert may alert again.
  Suppressed ticks do not extend the cooldown. ``cooldown_s == 0`` disables it.
- `mw_core.markets.analysis.Analyzer` runs `SymbolWindows` + `AnomalyDetector` for the streaming
  processor, the Dagster batch path and `mw backtest` alike
  (``stats = windows.update(ts, price)`` then ``detector.check(..., windows=windows)``), so
  the same ticks with the same warm-up and cooldown state give the same anomalies.
- Reference tick of an anomaly: with ``windows=`` (the `SymbolWindows` that produced `stats`)
  ``ref_ts``/``ref_price`` are the window's exact reference tick; without it ``ref_price`` is
  derived as ``price / (1 + ret)`` and ``ref_ts`` is None. `WindowStats` is left unchanged so
  that the hot path does not carry two more fields per window per tick.
- Pure: no I/O. ``threshold_for`` must be pure; its result is cached per (symbol, window).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from mw_core.markets.volatility import AdaptiveThresholds
from mw_core.markets.windows import SymbolWindows
from mw_core.models import Anomaly, WindowStats

__all__ = ["AnomalyDetector"]


class AnomalyDetector:
    """Applies the threshold and cooldown rules to the window statistics of each tick.

    Example:
        >>> det = AnomalyDetector(threshold_for=lambda symbol, w: 0.02, cooldown_s=60)
        >>> a = det.check("BTCUSDT", 60_000, 97.0, [WindowStats(60, -0.03, None, 2)])
        >>> (a.window_s, a.direction, round(a.ref_price, 6))
        (60, 'down', 100.0)
        >>> det.check("BTCUSDT", 61_000, 96.0, [WindowStats(60, -0.04, None, 3)]) is None
        True
    """

    __slots__ = ("_cooldown_ms", "_last", "_threshold_for", "_thresholds")

    def __init__(self, *, threshold_for: Callable[[str, int], float], cooldown_s: int) -> None:
        """Create a detector with no alert history.

        Args:
            threshold_for: ``(symbol, window_s) -> threshold`` as a fraction (0.02 = 2 %),
                e.g. `Settings.threshold_for`. Must be pure: results are cached.
            cooldown_s: Minimum event-time distance between two alerts of one symbol.

        Raises:
            ValueError: Negative `cooldown_s`.
        """
        if cooldown_s < 0:
            raise ValueError(f"cooldown_s must be >= 0, got {cooldown_s}")
        self._threshold_for = threshold_for
        self._cooldown_ms = cooldown_s * 1000
        self._last: dict[str, int] = {}
        self._thresholds: dict[str, dict[int, float]] = {}

    def threshold(self, symbol: str, window_s: int) -> float:
        """The (cached) threshold of `symbol` over `window_s`.

        Raises:
            ValueError: `threshold_for` returned a non-positive or non-finite value.
        """
        table = self._thresholds.get(symbol)
        if table is None:
            table = self._thresholds[symbol] = {}
        t = table.get(window_s)
        if t is None:
            t = float(self._threshold_for(symbol, window_s))
            if not 0.0 < t < float("inf"):
                raise ValueError(f"threshold for {symbol} over {window_s}s must be positive, got {t!r}")
            table[window_s] = t
        return t

    def check(
        self,
        symbol: str,
        ts: int,
        price: float,
        stats: Sequence[WindowStats],
        *,
        windows: SymbolWindows | None = None,
        adaptive: AdaptiveThresholds | None = None,
    ) -> Anomaly | None:
        """Decide whether the tick at `ts` is an anomaly, and record it if so.

        Args:
            symbol: The tick's symbol.
            ts: Tick time, epoch ms.
            price: Tick price.
            stats: The tick's window statistics (`SymbolWindows.update`'s result).
            windows: The `SymbolWindows` that produced `stats`; gives the exact reference tick.
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
            table = self._thresholds[symbol] = {}
        best: WindowStats | None = None
        best_ret = 0.0
        best_score = 0.0
        best_threshold = 0.0
        for st in stats:
            ret = st.ret
            if ret is None:
                continue
            w = st.window_s
            t = table.get(w)
            if t is None:
                t = self.threshold(symbol, w)
            if adaptive is not None:
                t = adaptive.threshold(w, t)
            a = abs(ret)
            if a >= t:
                score = a / t
                if best is None or score > best_score or (score == best_score and w < best.window_s):
                    best = st
                    best_ret = ret
                    best_score = score
                    best_threshold = t
        if best is None:
            return None
        ref_ts: int | None
        ref_price: float | None
        if windows is not None:
            ref_ts, ref_price = windows.reference(windows.windows_s.index(best.window_s))
        else:
            # ret <= -1 cannot come from positive prices, but stats may be hand-made.
            ref_ts, ref_price = None, (price / (1.0 + best_ret) if best_ret > -1.0 else None)
        self._last[symbol] = ts
        return Anomaly(
            symbol=symbol,
            ts=ts,
            window_s=best.window_s,
            ret=best_ret,
            direction="up" if best_ret > 0 else "down",
            price=price,
            threshold=best_threshold,
            volatility=best.volatility,
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
