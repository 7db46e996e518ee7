"""Alert episodes: the unit a person is told about (pure policy, shared by stream and batch).

Contract (event time only, so the stream, the batch path and `mw backtest` agree):
- A raw detection (`Anomaly`) of a symbol with no open episode OPENS one: event ``open``,
  ``seq`` 1. The episode id is ``"<SYMBOL>-<open ts ms>"``: deterministic, so a replay or a
  restart names the same episode the same way.
- While the episode is open, further detections UPDATE it silently (peak, extreme price, last
  breach) and ESCALATE (event ``escalate``, next ``seq``) only when the detection's severity
  (``|ret| / threshold``: windows of different length compare on one scale) reaches
  ``escalation_step`` times the severity last alerted. Direction does not matter: a volatile
  period that flips between up and down stays ONE episode and alerts again only when a move is
  materially larger than the last one alerted, so a whipsaw cannot flood anyone; the event says
  ``reversal`` when its direction differs from the opening one.
- The episode CLOSES on the symbol's first tick at or after ``last breach + quiet_s`` (event
  ``close``, ``ts`` = last breach + quiet_s) with a summary: peak move, duration, and the extreme
  price against the opening reference price.
- ``enabled=False``: every detection is an episode of its own (one ``open``, never escalated,
  closed by the next detection's open or the quiet period), i.e. one alert per raw detection.
- State is plain data (`EpisodeState`), saved to and rebuilt from the database; a policy seeded
  with the state of a prefix continues exactly like one that saw the whole sequence.
- Pure: no I/O. O(1) per tick (a dict lookup) and per detection.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal

from mw_core.config import Settings
from mw_core.models import Anomaly, Direction, ms_to_dt

__all__ = [
    "EpisodeEvent",
    "EpisodePolicy",
    "EpisodeState",
    "EventKind",
    "alert_json",
    "alert_order",
    "episode_id",
]

EventKind = Literal["open", "escalate", "close"]


def episode_id(symbol: str, open_ts: int) -> str:
    return f"{symbol}-{open_ts}"


@dataclass(frozen=True, slots=True)
class EpisodeState:
    """An open episode (what `alert_episodes` stores)."""

    episode_id: str
    symbol: str
    opened_ts: int
    direction: Direction  # of the opening move
    ref_price: float  # the opening detection's reference price
    ref_ts: int | None
    seq: int  # last event's seq
    alerted_severity: float  # severity of the last alert (open or escalate)
    peak_ret: float  # the detection with the largest |ret| so far
    peak_window_s: int
    peak_ts: int
    extreme_price: float  # price farthest from ref_price seen while open
    last_breach_ts: int


@dataclass(frozen=True, slots=True)
class EpisodeEvent:
    """One alert a person receives (``open`` / ``escalate``) or the episode's ``close``."""

    episode_id: str
    seq: int
    kind: EventKind
    symbol: str
    ts: int  # event time, epoch ms
    window_s: int
    ret: float
    direction: Direction
    price: float
    threshold: float
    ref_price: float
    ref_ts: int | None
    peak_ret: float
    peak_window_s: int
    extreme_price: float
    opened_ts: int
    summary: str

    @property
    def key(self) -> tuple[str, int]:
        return (self.episode_id, self.seq)


def alert_json(event: EpisodeEvent | Mapping[str, Any]) -> dict[str, Any]:
    """One entry of the ``"alerts"`` list of `mw replay --json` and `mw backtest --json`.

    Accepts an `EpisodeEvent` or the body of an `alerts` topic record (`codec.encode_event`), so
    both commands print the same shape: ``{"symbol", "ts", "kind", "window_s", "ret", "direction",
    "episode_id", "seq"}`` with ``ts`` ISO-8601 UTC (``2024-08-05T01:07:59.999Z``) and ``ret``
    rounded to 6 decimals (like the anomalies).
    """

    def get(name: str) -> Any:
        return event[name] if isinstance(event, Mapping) else getattr(event, name)

    return {
        "symbol": str(get("symbol")),
        # Fixed width (milliseconds always shown), so the text sorts like the time.
        "ts": ms_to_dt(int(get("ts"))).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "kind": str(get("kind")),
        "window_s": int(get("window_s")),
        "ret": round(float(get("ret")), 6),
        "direction": str(get("direction")),
        "episode_id": str(get("episode_id")),
        "seq": int(get("seq")),
    }


def alert_order(alert: Mapping[str, Any]) -> tuple[str, str, int]:
    """Sort key of `alert_json` entries: (ts, symbol, seq); ISO times of one format sort as text."""
    return (str(alert["ts"]), str(alert["symbol"]), int(alert["seq"]))


def _pct(x: float) -> str:
    return f"{x * 100:+.2f}%"


def _hhmm(ms: int) -> str:
    return ms_to_dt(ms).strftime("%Y-%m-%d %H:%M UTC")


def summarize(kind: EventKind, st: EpisodeState, a: Anomaly | None, ts: int) -> str:
    """The template summary of an event (the LLM may add a richer one later)."""
    if kind == "close" or a is None:
        minutes = max(0, ts - st.opened_ts) // 60_000
        move = st.extreme_price / st.ref_price - 1 if st.ref_price else 0.0
        return (
            f"{st.symbol} episode closed after {minutes} min: peak {_pct(st.peak_ret)} over "
            f"{st.peak_window_s // 60} min; extreme {st.extreme_price:.8g} vs reference "
            f"{st.ref_price:.8g} ({_pct(move)})."
        )
    stage = "opened" if kind == "open" else "escalated"
    flip = " (reversal)" if kind == "escalate" and a.direction != st.direction else ""
    return (
        f"{a.symbol} {'up' if a.ret > 0 else 'down'} {_pct(a.ret)} over {a.window_s // 60} min "
        f"at {_hhmm(a.ts)} to {a.price:.8g}; episode {stage}{flip}."
    )


class EpisodePolicy:
    """Turns raw detections into episode events. Implements `analysis.EventSink`."""

    __slots__ = ("_quiet_ms", "enabled", "events", "open", "step")

    def __init__(self, *, escalation_step: float, quiet_s: int, enabled: bool = True) -> None:
        if escalation_step <= 1.0:
            raise ValueError(f"escalation_step must be > 1, got {escalation_step}")
        if quiet_s <= 0:
            raise ValueError(f"quiet_s must be > 0, got {quiet_s}")
        self.step = escalation_step
        self._quiet_ms = quiet_s * 1000
        self.enabled = enabled
        self.open: dict[str, EpisodeState] = {}
        self.events: list[EpisodeEvent] = []  # emitted, drained by the caller (`take`)

    @classmethod
    def from_settings(cls, settings: Settings) -> EpisodePolicy:
        return cls(
            escalation_step=settings.episode_escalation_step,
            quiet_s=settings.episode_quiet_s,
            enabled=settings.episodes_enabled,
        )

    @property
    def rebuild_lookback_s(self) -> int:
        """How far back a rebuild reads stored detections to find a still-open episode's start."""
        return max(86_400, 4 * self._quiet_ms // 1000)

    # --- state ---------------------------------------------------------------------------------
    def seed(self, states: Iterable[EpisodeState]) -> None:
        """Restore open episodes (after a restart or a rebalance)."""
        for st in states:
            self.open[st.symbol] = st

    def rebuild(self, symbol: str, detections: Iterable[Anomaly], *, before_ts: int) -> EpisodeState | None:
        """Rebuild `symbol`'s episode as of `before_ts` from its stored raw detections.

        Replays the detections (ascending, all before `before_ts`) the way the stream saw them,
        closing on quiet gaps, and discards the events (they are stored already). Returns the
        open episode, if any; its extreme price covers the detections only, the caller may
        widen it with `widen_extreme` from stored prices.
        """
        self.open.pop(symbol, None)
        saved, self.events = self.events, []
        for a in detections:
            st = self.open.get(symbol)
            if st is not None and a.ts >= st.last_breach_ts + self._quiet_ms:
                self._close(st)
            self.on_anomaly(a)
        self.events = saved
        return self.open.get(symbol)

    def extreme_span(self, symbol: str, before_ts: int) -> tuple[int, int] | None:
        """``[t0, t1)`` whose stored prices the rebuilt open episode of `symbol` has seen."""
        st = self.open.get(symbol)
        if st is None:
            return None
        return (st.opened_ts, min(before_ts, st.last_breach_ts + self._quiet_ms))

    def widen_extreme(self, symbol: str, lo: float, hi: float) -> None:
        """Let stored prices seen while the episode was open define its extreme price."""
        st = self.open.get(symbol)
        if st is None:
            return
        best = st.extreme_price
        for p in (lo, hi):
            if abs(p - st.ref_price) > abs(best - st.ref_price):
                best = p
        self.open[symbol] = replace(st, extreme_price=best)

    def drop(self, symbols: Iterable[str]) -> None:
        for s in symbols:
            self.open.pop(s, None)

    def take(self) -> list[EpisodeEvent]:
        """The events emitted since the last call."""
        out, self.events = self.events, []
        return out

    # --- EventSink -----------------------------------------------------------------------------
    def on_tick(self, symbol: str, ts: int, price: float) -> None:
        st = self.open.get(symbol)
        if st is None:
            return
        if ts >= st.last_breach_ts + self._quiet_ms:
            self._close(st)
            return
        if abs(price - st.ref_price) > abs(st.extreme_price - st.ref_price):
            self.open[symbol] = replace(st, extreme_price=price)

    def on_anomaly(self, a: Anomaly) -> None:
        st = self.open.get(a.symbol)
        severity = abs(a.ret) / a.threshold
        if st is None or not self.enabled:
            if st is not None:
                self._close(replace(st, last_breach_ts=a.ts - self._quiet_ms))
            ref = a.ref_price if a.ref_price is not None else a.price / (1 + a.ret)
            st = EpisodeState(
                episode_id=episode_id(a.symbol, a.ts),
                symbol=a.symbol,
                opened_ts=a.ts,
                direction=a.direction,
                ref_price=ref,
                ref_ts=a.ref_ts,
                seq=1,
                alerted_severity=severity,
                peak_ret=a.ret,
                peak_window_s=a.window_s,
                peak_ts=a.ts,
                extreme_price=a.price,
                last_breach_ts=a.ts,
            )
            self.open[a.symbol] = st
            self._emit("open", st, a)
            return
        peak = abs(a.ret) > abs(st.peak_ret)
        extreme = abs(a.price - st.ref_price) > abs(st.extreme_price - st.ref_price)
        st = replace(
            st,
            peak_ret=a.ret if peak else st.peak_ret,
            peak_window_s=a.window_s if peak else st.peak_window_s,
            peak_ts=a.ts if peak else st.peak_ts,
            extreme_price=a.price if extreme else st.extreme_price,
            last_breach_ts=a.ts,
        )
        if severity >= st.alerted_severity * self.step:
            st = replace(st, seq=st.seq + 1, alerted_severity=severity)
            self.open[a.symbol] = st
            self._emit("escalate", st, a)
        else:
            self.open[a.symbol] = st

    # --- events --------------------------------------------------------------------------------
    def _close(self, st: EpisodeState) -> None:
        del self.open[st.symbol]
        closed = replace(st, seq=st.seq + 1)
        self._emit("close", closed, None)

    def _emit(self, kind: EventKind, st: EpisodeState, a: Anomaly | None) -> None:
        ts = a.ts if a is not None else st.last_breach_ts + self._quiet_ms
        # The event's fields in `EpisodeEvent` order: who and when, the move, the episode so far.
        head = (st.episode_id, st.seq, kind, st.symbol, ts)
        move: tuple[int, float, Direction, float, float]
        if a is not None:
            move = (a.window_s, a.ret, a.direction, a.price, a.threshold)
        else:  # a close reports the episode's peak move and extreme price (no threshold)
            peak_dir: Direction = "up" if st.peak_ret > 0 else "down"
            move = (st.peak_window_s, st.peak_ret, peak_dir, st.extreme_price, 0.0)
        so_far = (st.ref_price, st.ref_ts, st.peak_ret, st.peak_window_s, st.extreme_price, st.opened_ts)
        self.events.append(EpisodeEvent(*(head + move + so_far), summarize(kind, st, a, ts)))
