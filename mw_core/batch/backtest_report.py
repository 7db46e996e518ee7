"""The backtest report: what a person would have been told, per symbol and UTC day (pandas).

Contract (all times are event times, epoch ms in, ISO-8601 UTC out):
- ``detections``: raw detections (`Anomaly`); ``alerts``: episode ``open`` + ``escalate`` events
  (what a person receives; ``close`` is a summary, not an alert).
- A *move* is a tick whose 5-minute return ``|close[t] / close[t - 5 min] - 1|`` reaches
  ``move_pct`` %; ``close[t - 5 min]`` is the last tick at or before ``t - 5 min`` (warm-up ticks
  included) and no older than ``t - 6 min`` (across a gap there is no 5-minute return).
- A move's *lag* is the time from its tick to the first alert at or after the start of its
  5-minute window (``t - 5 min``), clamped at >= 0; a move with no such alert is *unalerted*.
  The row gives the day's first move's lag and the largest lag of its alerted moves.
- The day's *largest move* is its largest ``|5-minute return|``; it is *alerted* when an alert lies
  within 2 minutes of its tick (either side).
- ``worst_hour_alerts``: the most alerts in one clock hour (UTC) of the day.
Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from mw_core.batch.partition import PartitionPrices, SymbolSeries
from mw_core.markets.episodes import EpisodeEvent
from mw_core.models import Anomaly

__all__ = ["COLUMNS", "DEFAULT_MOVE_PCT", "day_table", "five_minute_returns", "summarize"]

DEFAULT_MOVE_PCT = 3.0
MOVE_WINDOW_MS = 300_000
LARGEST_NEAR_MS = 120_000
REF_TOLERANCE_MS = 60_000

COLUMNS = [
    "symbol",
    "day",
    "ticks",
    "detections",
    "alerts",
    "opens",
    "escalations",
    "moves",
    "first_move_at",
    "first_move_lag_s",
    "max_move_lag_s",
    "moves_unalerted",
    "largest_move_pct",
    "largest_move_at",
    "largest_move_alerted",
    "worst_hour_alerts",
    "worst_hour",
]


def _utc(ms: Any) -> Any:
    return pd.to_datetime(ms, unit="ms", utc=True)


def _iso(ms: int) -> str:
    return str(_utc(ms).isoformat(timespec="milliseconds")).replace("+00:00", "Z")


def five_minute_returns(series: SymbolSeries) -> pd.DataFrame:
    """``ts, price, ret5, day`` for the series' ticks (warm-up ticks serve as references only)."""
    frame = pd.DataFrame(series.warmup + series.ticks, columns=["ts", "price"]).astype(
        {"ts": "int64", "price": "float64"}
    )
    ref = frame.rename(columns={"ts": "ref_ts", "price": "ref_price"})
    left = frame.assign(ref_ts=frame["ts"] - MOVE_WINDOW_MS)
    # A reference older than t - 5 min - 1 min is no 5-minute reference (a gap, or the previous
    # file of the same symbol): no return rather than a fake move across the gap.
    merged = pd.merge_asof(left, ref, on="ref_ts", direction="backward", tolerance=REF_TOLERANCE_MS)
    merged["ret5"] = merged["price"] / merged["ref_price"] - 1.0
    out = merged.iloc[len(series.warmup) :][["ts", "price", "ret5"]].reset_index(drop=True)
    out["day"] = _utc(out["ts"]).dt.strftime("%Y-%m-%d")
    return out


def _counts(keys: Sequence[tuple[str, int]]) -> dict[tuple[str, str], int]:
    """(symbol, ts) pairs -> count per (symbol, UTC day)."""
    if not keys:
        return {}
    frame = pd.DataFrame(keys, columns=["symbol", "ts"])
    frame["day"] = _utc(frame["ts"]).dt.strftime("%Y-%m-%d")
    sizes = frame.groupby(["symbol", "day"]).size()
    return {(str(s), str(d)): int(n) for (s, d), n in sizes.items()}


def _move_lags(
    moves_ts: np.ndarray[Any, Any], alert_ts: np.ndarray[Any, Any], open_spans: Sequence[tuple[int, int]] = ()
) -> np.ndarray[Any, Any]:
    """Seconds from each move to the first alert at or after its window start; NaN if none.

    A move inside an episode that was already open (and so already alerted) at the move's time has
    lag 0: the person is watching that episode, and the policy alerts again only on a materially
    bigger move.
    """
    if len(alert_ts) == 0:
        return np.full(len(moves_ts), np.nan)
    idx = np.searchsorted(alert_ts, moves_ts - MOVE_WINDOW_MS, side="left")
    found = idx < len(alert_ts)
    first = alert_ts[np.minimum(idx, len(alert_ts) - 1)]
    lags = np.where(found, np.maximum(0, first - moves_ts) / 1000.0, np.nan)
    for start, end in open_spans:
        lags[(moves_ts >= start) & (moves_ts < end)] = 0.0
    return lags


def _episode_spans(events: Sequence[EpisodeEvent]) -> list[tuple[int, int]]:
    """[open, close) of each episode of one symbol (still open: until the end of time)."""
    opened: dict[str, int] = {}
    closed: dict[str, int] = {}
    for e in events:
        if e.kind == "open":
            opened[e.episode_id] = e.ts
        elif e.kind == "close":
            closed[e.episode_id] = e.ts
    return [(t0, closed.get(eid, 1 << 62)) for eid, t0 in opened.items()]


def _alert_near(ts: int, alert_ts: np.ndarray[Any, Any]) -> bool:
    idx = int(np.searchsorted(alert_ts, ts - LARGEST_NEAR_MS, side="left"))
    return idx < len(alert_ts) and int(alert_ts[idx]) <= ts + LARGEST_NEAR_MS


def _worst_hour(day_alerts: np.ndarray[Any, Any]) -> tuple[int, str | None]:
    if len(day_alerts) == 0:
        return 0, None
    per_hour = pd.Series(1, index=_utc(day_alerts)).resample("1h").sum()
    return int(per_hour.max()), str(per_hour.idxmax().isoformat()).replace("+00:00", "Z")


def _day_row(
    symbol: str,
    day: str,
    g: pd.DataFrame,
    alert_ts: np.ndarray[Any, Any],
    alert_day: np.ndarray[Any, Any],
    move: float,
    open_spans: Sequence[tuple[int, int]] = (),
) -> dict[str, Any]:
    moves = g[g["ret5"].abs() >= move]
    lags = _move_lags(moves["ts"].to_numpy(), alert_ts, open_spans)
    row: dict[str, Any] = {
        "symbol": symbol,
        "day": day,
        "ticks": len(g),
        "moves": len(moves),
        "first_move_at": _iso(int(moves["ts"].iloc[0])) if len(moves) else None,
        "first_move_lag_s": float(lags[0]) if len(moves) and not np.isnan(lags[0]) else None,
        "max_move_lag_s": float(np.nanmax(lags)) if len(lags) and not np.isnan(lags).all() else None,
        "moves_unalerted": int(np.isnan(lags).sum()),
        "largest_move_pct": None,
        "largest_move_at": None,
        "largest_move_alerted": None,
    }
    size = g["ret5"].abs()
    if size.notna().any():
        i = size.idxmax()
        ts = int(g.at[i, "ts"])
        row["largest_move_pct"] = round(float(g.at[i, "ret5"]) * 100, 3)
        row["largest_move_at"] = _iso(ts)
        row["largest_move_alerted"] = _alert_near(ts, alert_ts)
    row["worst_hour_alerts"], row["worst_hour"] = _worst_hour(alert_ts[alert_day == day])
    return row


def day_table(
    data: PartitionPrices,
    anomalies: Sequence[Anomaly],
    events: Sequence[EpisodeEvent],
    *,
    move_pct: float = DEFAULT_MOVE_PCT,
) -> pd.DataFrame:
    """One row per (symbol, UTC day with ticks), `COLUMNS`; see the module docstring."""
    move = move_pct / 100.0
    alerts = [e for e in events if e.kind != "close"]
    detections = _counts([(a.symbol, a.ts) for a in anomalies])
    opens = _counts([(e.symbol, e.ts) for e in alerts if e.kind == "open"])
    escalations = _counts([(e.symbol, e.ts) for e in alerts if e.kind == "escalate"])
    rows: list[dict[str, Any]] = []
    for series in data.series:
        if not series.ticks:
            continue
        symbol = series.symbol
        alert_ts = np.array(sorted(e.ts for e in alerts if e.symbol == symbol), dtype="int64")
        alert_day = _utc(alert_ts).strftime("%Y-%m-%d").to_numpy()
        spans = _episode_spans([e for e in events if e.symbol == symbol])
        for day, g in five_minute_returns(series).groupby("day", sort=True):
            row = _day_row(symbol, str(day), g, alert_ts, alert_day, move, spans)
            key = (symbol, str(day))
            row["detections"] = detections.get(key, 0)
            row["opens"] = opens.get(key, 0)
            row["escalations"] = escalations.get(key, 0)
            row["alerts"] = row["opens"] + row["escalations"]
            rows.append(row)
    return pd.DataFrame(rows, columns=COLUMNS)


def summarize(days: pd.DataFrame) -> dict[str, Any]:
    """Headline numbers of a `day_table`: volume, worst symbol-day, recall on the first moves."""
    if days.empty:
        return {"symbols": 0, "days": 0, "detections": 0, "alerts": 0}
    with_moves = days[days["moves"] > 0]
    lag = with_moves["first_move_lag_s"]
    largest = days["largest_move_alerted"].dropna()
    return {
        "symbols": int(days["symbol"].nunique()),
        "days": int(days["day"].nunique()),
        "detections": int(days["detections"].sum()),
        "alerts": int(days["alerts"].sum()),
        "max_alerts_symbol_day": int(days["alerts"].max()),
        "worst_hour_alerts": int(days["worst_hour_alerts"].max()),
        "symbol_days_with_moves": len(with_moves),
        "first_move_alerted_60s": int((lag.notna() & (lag <= 60)).sum()),
        "first_move_lag_max_s": None if lag.dropna().empty else float(lag.max()),
        "largest_move_alerted": int(largest.astype(bool).sum()),
    }
