"""THE analysis path: tick admission, window update and detection, shared by stream and batch.

Contract:
- `Analyzer` keeps per-symbol state (`SymbolWindows`, the detector's cooldown, and the episode
  policy when one is given) and analyses ticks in the order they arrive. The streaming
  processor calls `Analyzer.run` once per consumed batch; the batch paths (`price_anomalies`
  partitions, `mw backtest`) call `analyse_series` / `Analyzer.run` over stored or recorded
  ticks. Same ticks in the same order with the same starting state -> the same anomalies,
  rejections and episode events, by construction: there is no second loop.
- Admission of a tick of a symbol whose newest applied tick is at ``newest``:
  - ``ts > newest`` (or no state yet): applied to the windows, then checked by the detector;
  - ``ts == newest``: a duplicate (a re-sent record): kept for the idempotent store, not applied;
  - ``newest - ts <= max_out_of_order_ms``, or the tick is a REST backfill of a gap
    (``source == "rest_backfill"``): late but kept: stored, not applied to the windows;
  - otherwise rejected with reason ``out_of_order`` (the caller dead-letters it).
- Rejections carry only the reason and a human detail; the caller owns the topic and payload.
- Pure: no I/O, O(1) amortized per tick (the windows' cost).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from mw_core.config import Settings
from mw_core.markets.detector import AnomalyDetector
from mw_core.markets.volatility import AdaptiveThresholds
from mw_core.markets.windows import SymbolWindows
from mw_core.models import Anomaly, Tick, WindowStats

__all__ = ["Analysis", "Analyzer", "EventSink", "Rejection", "analyse_series"]

OUT_OF_ORDER = "out_of_order"


@dataclass(frozen=True, slots=True)
class Rejection:
    """A tick the analysis refuses (the caller turns it into a dead letter)."""

    reason: str
    tick: Tick
    detail: str


class EventSink(Protocol):
    """What the analysis tells about ticks and detections (the episode policy implements it).

    ``on_tick`` is called, before detection, only for symbols in ``open`` (keeps the hot path to
    one dict lookup per tick while nothing is open).
    """

    @property
    def open(self) -> Mapping[str, object]: ...

    def on_anomaly(self, anomaly: Anomaly) -> None: ...

    def on_tick(self, symbol: str, ts: int, price: float) -> None: ...


@dataclass(slots=True)
class Analysis:
    """The result of analysing one sequence of ticks."""

    stored: list[Tick] = field(default_factory=list)  # ticks to make durable (applied + dup + late)
    anomalies: list[Anomaly] = field(default_factory=list)
    anomaly_index: list[int] = field(default_factory=list)  # index in the input of each anomaly's tick
    rejected: list[Rejection] = field(default_factory=list)
    # The windows of every symbol a tick was applied to; `last_stats` reads them on demand.
    touched: dict[str, SymbolWindows] = field(default_factory=dict)
    duplicates: int = 0
    late_stored: int = 0

    def last_stats(self) -> dict[str, tuple[int, tuple[WindowStats, ...]]]:
        """Per symbol a tick was applied to: its newest tick time and window statistics.

        As of the newest applied tick, which is what the windows hold until the next `run`.
        """
        return {symbol: (w.last_ts, w.stats()) for symbol, w in self.touched.items()}


class Analyzer:
    """Per-symbol windows + detector (+ optional episode sink): the one analysis loop."""

    __slots__ = ("_adaptive_cfg", "_tolerance_ms", "adaptive", "detector", "sink", "windows", "windows_s")

    def __init__(
        self,
        *,
        windows_s: Sequence[int],
        threshold_for: Callable[[str, int], float],
        cooldown_s: int,
        max_out_of_order_s: int,
        sink: EventSink | None = None,
        adaptive: tuple[int, float, int] | None = None,
    ) -> None:
        """Args: ``adaptive`` = ``(lookback_s, z, min_samples)`` turns on volatility-aware
        thresholds (`mw_core.markets.volatility`); None keeps the fixed % thresholds."""
        self.windows_s = tuple(windows_s)
        self.detector = AnomalyDetector(
            windows_s=windows_s, threshold_for=threshold_for, cooldown_s=cooldown_s
        )
        self.windows: dict[str, SymbolWindows] = {}
        self.sink = sink
        self._tolerance_ms = max_out_of_order_s * 1000
        self._adaptive_cfg = adaptive
        self.adaptive: dict[str, AdaptiveThresholds] | None = {} if adaptive is not None else None

    @classmethod
    def from_settings(cls, settings: Settings, *, sink: EventSink | None = None) -> Analyzer:
        """An analyzer configured like the streaming processor (`Settings`)."""
        return cls(
            windows_s=settings.windows_s,
            threshold_for=settings.threshold_for,
            cooldown_s=settings.cooldown_s,
            max_out_of_order_s=settings.max_out_of_order_s,
            sink=sink,
            adaptive=adaptive_config(settings),
        )

    # --- state ---------------------------------------------------------------------------------
    def knows(self, symbol: str) -> bool:
        return symbol in self.windows

    def hydrate(
        self,
        symbol: str,
        history: Iterable[tuple[int, float]],
        *,
        last_alert_ts: int | None = None,
        closes: Iterable[tuple[int, float]] = (),
        before_ts: int | None = None,
    ) -> None:
        """(Re)build a symbol's state from stored ticks (warm-up, not checked) and its last alert.

        In adaptive mode, `closes` (1-minute closes before `before_ts`) rebuild the baseline;
        without them the warm-up ticks feed it.
        """
        history = list(history)
        windows = SymbolWindows(self.windows_s)
        windows.load(history)
        self.windows[symbol] = windows
        if last_alert_ts is not None:
            self.detector.seed_cooldown(symbol, last_alert_ts)
        if self.adaptive is not None:
            base = self._new_baseline()
            closes = list(closes)
            if closes and before_ts is not None:
                base.load_closes(closes, before_ts=before_ts)
            else:
                for ts, price in history:
                    base.observe(ts, price)
            self.adaptive[symbol] = base

    def _new_baseline(self) -> AdaptiveThresholds:
        assert self._adaptive_cfg is not None
        lookback_s, z, min_samples = self._adaptive_cfg
        return AdaptiveThresholds(self.windows_s, lookback_s=lookback_s, z=z, min_samples=min_samples)

    def drop(self, symbols: Iterable[str]) -> None:
        """Forget symbols (their partition moved away; rehydrated when it comes back)."""
        for symbol in symbols:
            self.windows.pop(symbol, None)
            if self.adaptive is not None:
                self.adaptive.pop(symbol, None)

    # --- the loop ------------------------------------------------------------------------------
    def run(self, ticks: Sequence[Tick], out: Analysis | None = None) -> Analysis:
        """Analyse `ticks` in order; symbols without state start empty (call `hydrate` first).

        Appends to `out` when given (the processor analyses a batch partition by partition);
        `anomaly_index` then counts from the start of this call's `ticks`.
        """
        res = Analysis() if out is None else out
        keep = res.stored.append
        state = self.windows
        check = self.detector.check
        sink = self.sink
        sink_open: Mapping[str, object] = sink.open if sink is not None else {}
        tolerance = self._tolerance_ms
        touched = res.touched
        anomalies = res.anomalies
        index = res.anomaly_index
        adaptive = self.adaptive
        for i, tick in enumerate(ticks):
            symbol, ts, price = tick[0], tick[1], tick[2]
            windows = state.get(symbol)
            if windows is None:
                windows = state[symbol] = SymbolWindows(self.windows_s)
            newest = windows.last_ts
            if ts <= newest:
                if ts == newest:
                    res.duplicates += 1
                    keep(tick)  # idempotent insert; keeps a re-sent tick durable
                    continue
                if newest - ts > tolerance and tick.source != "rest_backfill":
                    res.rejected.append(
                        Rejection(
                            OUT_OF_ORDER,
                            tick,
                            f"{symbol} ts {ts} is {(newest - ts) / 1000:.1f}s older than {newest}",
                        )
                    )
                    continue
                # Late but tolerated (or a REST backfill of a gap): stored, not applied to windows.
                res.late_stored += 1
                keep(tick)
                continue
            rets = windows.advance(ts, price)
            keep(tick)
            touched[symbol] = windows
            if symbol in sink_open:
                sink.on_tick(symbol, ts, price)  # type: ignore[union-attr]  # sink_open is empty without a sink
            if adaptive is not None:
                base = adaptive.get(symbol)
                if base is None:
                    base = adaptive[symbol] = self._new_baseline()
                anomaly = check(symbol, ts, price, rets, windows=windows, adaptive=base)
                base.observe(ts, price)  # after the check: a move is judged against the past
            else:
                anomaly = check(symbol, ts, price, rets, windows)
            if anomaly is not None:
                anomalies.append(anomaly)
                index.append(i)
                if sink is not None:
                    sink.on_anomaly(anomaly)
        return res


def adaptive_config(settings: Settings) -> tuple[int, float, int] | None:
    """``(lookback_s, z, min_samples)`` of adaptive scoring, None in the default fixed mode."""
    if settings.scoring != "adaptive":
        return None
    return (settings.adaptive_lookback_s, settings.adaptive_z, settings.adaptive_min_samples)


def closes_lookback_s(settings: Settings) -> int:
    """Stored 1-minute closes a restart needs for the volatility baseline (0 in fixed mode)."""
    if settings.scoring != "adaptive":
        return 0
    return settings.adaptive_lookback_s + max(settings.windows_s) + 60


def analyse_series(
    symbol: str,
    ticks: Iterable[tuple[int, float] | Tick],
    *,
    windows_s: Sequence[int],
    threshold_for: Callable[[str, int], float],
    cooldown_s: int,
    max_out_of_order_s: int = 0,
    warmup: Iterable[tuple[int, float]] = (),
    last_alert_ts: int | None = None,
    sink: EventSink | None = None,
    adaptive: tuple[int, float, int] | None = None,
    closes: Iterable[tuple[int, float]] = (),
) -> Analysis:
    """Analyse one symbol's ticks after a warm-up (the batch entry point).

    `ticks` are ``(ts, price)`` pairs (stored prices) or `Tick` records (which keep their
    ``source``, e.g. ``rest_backfill``), in arrival order.
    """
    analyzer = Analyzer(
        windows_s=windows_s,
        threshold_for=threshold_for,
        cooldown_s=cooldown_s,
        max_out_of_order_s=max_out_of_order_s,
        sink=sink,
        adaptive=adaptive,
    )
    items = [t if isinstance(t, Tick) else Tick(symbol, t[0], t[1]) for t in ticks]
    analyzer.hydrate(
        symbol, warmup, last_alert_ts=last_alert_ts, closes=closes, before_ts=items[0].ts if items else None
    )
    return analyzer.run(items)
