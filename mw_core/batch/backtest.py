"""`mw backtest`: THE analysis + episode code over recorded klines or stored prices, no services.

Contract:
- Ticks: from kline dumps exactly as `mw replay` serves them (one tick per kline, ``ts`` = close
  time, ``price`` = close; per symbol by open time, a later file wins a duplicate open time; prices
  above ``max_price`` are dropped like the ingest/processor do), or from `prices` for
  ``[start, end)`` plus the warm-up the analysis needs before ``start`` (the longest window, plus
  the adaptive baseline's lookback in adaptive mode), read in one set-based query
  (`batch.partition.load_partition`).
- Analysis: `batch.partition.detect_partition` (windows, detector, adaptive thresholds, episode
  policy: the code the processor runs) from a cold start: no cooldown or episode is seeded from
  stored detections, so a configuration is judged on its own and the same ticks give the same
  alerts from files and from the database.
- Settings: the caller's `Settings` plus ``KEY=VALUE`` overrides (field names, or their ``MW_``
  variables), rebuilt through validation (`with_overrides`). ``--compare`` runs a second set.
- Report: `mw_core.batch.backtest_report.day_table` (pandas), one row per symbol and UTC day.
- JSON: ``{"config", "days", "alerts"}``; alerts are `episodes.alert_json` entries (the shape
  `mw replay --json` prints) sorted by (ts, symbol, seq), closes included.
- `backtest_day` is the synchronous entry point for a Dagster day partition (no dagster import).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pandas as pd

from mw_core.batch.backtest_report import DEFAULT_MOVE_PCT, day_table, summarize
from mw_core.batch.partition import (
    PartitionPrices,
    SymbolSeries,
    detect_partition,
    load_partition,
    run_with_pool,
)
from mw_core.config import ENV_PREFIX, ConfigError, Settings, load_settings
from mw_core.markets.episodes import EpisodeEvent, alert_json, alert_order
from mw_core.models import Anomaly
from mw_core.replay.klines import Kline, read_sources

__all__ = [
    "DEFAULT_MOVE_PCT",
    "BacktestRun",
    "backtest_day",
    "backtest_files",
    "backtest_range",
    "parse_overrides",
    "prices_from_files",
    "run_backtest",
    "warmup_s",
    "with_overrides",
]

#: The settings that shape the analysis: what ``"config"`` shows.
ANALYSIS_FIELDS = (
    "windows_s",
    "thresholds",
    "symbol_thresholds",
    "cooldown_s",
    "scoring",
    "adaptive_z",
    "adaptive_lookback_s",
    "adaptive_min_samples",
    "episodes_enabled",
    "episode_escalation_step",
    "episode_quiet_s",
    "max_out_of_order_s",
)
DAY_MS = 86_400_000


# --- settings --------------------------------------------------------------------------------------


def parse_overrides(pairs: Iterable[str]) -> dict[str, str]:
    """``["episodes_enabled=false", "MW_COOLDOWN_S=30"]`` -> ``{field name: raw value}``.

    Raises:
        ConfigError: A pair without ``=`` or a key that is no `Settings` field.
    """
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        name = key.strip().lower().replace("-", "_")
        if name.startswith(ENV_PREFIX.lower()) and name not in Settings.model_fields:
            name = name[len(ENV_PREFIX) :]
        if not sep or not name:
            raise ConfigError(f"override {pair!r}: expected KEY=VALUE")
        if name not in Settings.model_fields:
            raise ConfigError(f"override {pair!r}: {key.strip()!r} is not a setting (see `mw config`)")
        out[name] = value.strip()
    return out


def with_overrides(settings: Settings, overrides: Mapping[str, Any]) -> Settings:
    """`settings` with `overrides` applied through the validators (CSV lists and maps parse).

    Raises:
        ConfigError: An override is invalid; the message names the ``MW_`` variable.
    """
    if not overrides:
        return settings
    return load_settings(**{**settings.model_dump(), **overrides})


def warmup_s(settings: Settings) -> int:
    """Stored history the analysis needs before the first tick: what the stream rehydrates."""
    extra = settings.adaptive_lookback_s + 60 if settings.scoring == "adaptive" else 0
    return max(settings.windows_s) + extra


def _config(settings: Settings, overrides: Mapping[str, Any], move_pct: float) -> dict[str, Any]:
    cfg: dict[str, Any] = {}
    for name in ANALYSIS_FIELDS:
        value = getattr(settings, name)
        if name == "thresholds":
            value = {str(w): t for w, t in value.items()}
        elif name == "symbol_thresholds":
            value = {s: {str(w): t for w, t in m.items()} for s, m in value.items()}
        cfg[name] = value
    cfg["move_pct"] = move_pct
    cfg["overrides"] = {k: str(v) for k, v in overrides.items()}
    return cfg


# --- ticks -----------------------------------------------------------------------------------------


def _series(symbol: str, pairs: list[tuple[int, float]]) -> SymbolSeries:
    return SymbolSeries(symbol, [], pairs, len({ts // 60_000 for ts, _ in pairs}))


def prices_from_files(
    sources: Sequence[str | Path], *, max_price: float, symbols: Sequence[str] | None = None
) -> PartitionPrices:
    """The ticks `mw replay` produces for these dumps (see module docstring), per symbol.

    Raises:
        FileNotFoundError: A source does not exist (`replay.klines.resolve_sources`).
    """
    by_symbol: dict[str, dict[int, Kline]] = {}
    for f in read_sources(sources):
        rows = by_symbol.setdefault(f.symbol, {})
        for k in f.klines:
            rows[k.open_time] = k
    wanted = set(symbols) if symbols else None
    series: list[SymbolSeries] = []
    for symbol in sorted(by_symbol):
        if wanted is not None and symbol not in wanted:
            continue
        rows = by_symbol[symbol]
        pairs = [(rows[t].close_time, rows[t].close) for t in sorted(rows) if rows[t].close <= max_price]
        series.append(_series(symbol, pairs))
    ticks = [ts for s in series for ts, _ in s.ticks]
    start = min(ticks, default=0)
    end = max(ticks, default=-1) + 1
    return PartitionPrices(start_ms=start, end_ms=end, series=series, rows_scanned=len(ticks))


# --- the run ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BacktestRun:
    """One configuration's backtest: its detections, episode events and per-day report."""

    settings: Settings
    overrides: dict[str, str]
    move_pct: float
    data: PartitionPrices
    anomalies: list[Anomaly]
    events: list[EpisodeEvent]  # sorted by (ts, symbol, seq)
    days: pd.DataFrame  # `backtest_report.day_table`
    seconds: float  # analysis + report time (reading excluded)
    compare: BacktestRun | None = field(default=None)

    @property
    def config(self) -> dict[str, Any]:
        return _config(self.settings, self.overrides, self.move_pct)

    def summary(self) -> dict[str, Any]:
        """Headline numbers (Dagster metadata, the CLI caption)."""
        return {**summarize(self.days), "seconds": round(self.seconds, 3)}

    def day_rows(self) -> list[dict[str, Any]]:
        """The report as JSON-ready rows (NaN -> None)."""
        rows: list[dict[str, Any]] = self.days.to_dict(orient="records")
        return [{k: _plain(v) for k, v in row.items()} for row in rows]

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "config": self.config,
            "days": self.day_rows(),
            "alerts": sorted((alert_json(e) for e in self.events), key=alert_order),
        }
        if self.compare is not None:
            out["compare"] = self.compare.as_json()
        return out


def _plain(value: Any) -> Any:
    """numpy / pandas scalars -> JSON types; NaN and NA -> None."""
    if value is None or value is pd.NA:
        return None
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def run_backtest(
    data: PartitionPrices,
    settings: Settings,
    *,
    overrides: Mapping[str, Any] | None = None,
    compare: Mapping[str, Any] | None = None,
    move_pct: float = DEFAULT_MOVE_PCT,
) -> BacktestRun:
    """Analyse `data` with `settings` + `overrides` (and, when given, + `compare` as well).

    Raises:
        ConfigError: An override is invalid.
    """
    base = dict(overrides or {})
    first = _run(data, with_overrides(settings, base), base, move_pct)
    if compare is None:
        return first
    both = {**base, **compare}
    second = _run(data, with_overrides(settings, both), both, move_pct)
    return replace(first, compare=second)


def _run(
    data: PartitionPrices, settings: Settings, overrides: dict[str, Any], move_pct: float
) -> BacktestRun:
    t0 = time.perf_counter()
    anomalies, events = detect_partition(data, settings, {})
    events.sort(key=lambda e: (e.ts, e.symbol, e.seq))
    days = day_table(data, anomalies, events, move_pct=move_pct)
    return BacktestRun(
        settings=settings,
        overrides={k: str(v) for k, v in overrides.items()},
        move_pct=move_pct,
        data=data,
        anomalies=anomalies,
        events=events,
        days=days,
        seconds=time.perf_counter() - t0,
    )


def backtest_files(
    sources: Sequence[str | Path],
    settings: Settings,
    *,
    symbols: Sequence[str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    compare: Mapping[str, Any] | None = None,
    move_pct: float = DEFAULT_MOVE_PCT,
) -> BacktestRun:
    """Backtest kline dumps (or ``sample``)."""
    effective = with_overrides(settings, dict(overrides or {}))
    data = prices_from_files(sources, max_price=effective.max_price, symbols=symbols)
    return run_backtest(data, settings, overrides=overrides, compare=compare, move_pct=move_pct)


async def backtest_range(
    pool: asyncpg.Pool,
    settings: Settings,
    *,
    start_ms: int,
    end_ms: int,
    symbols: Sequence[str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    compare: Mapping[str, Any] | None = None,
    move_pct: float = DEFAULT_MOVE_PCT,
) -> BacktestRun:
    """Backtest the stored `prices` of ``[start_ms, end_ms)`` (one query, warm-up included)."""
    configs = [with_overrides(settings, dict(overrides or {}))]
    if compare is not None:
        configs.append(with_overrides(settings, {**(overrides or {}), **compare}))
    data = await load_partition(
        pool, start_ms=start_ms, end_ms=end_ms, warmup_s=max(warmup_s(s) for s in configs)
    )
    if symbols:
        wanted = set(symbols)
        data = PartitionPrices(
            start_ms=data.start_ms,
            end_ms=data.end_ms,
            series=[s for s in data.series if s.symbol in wanted],
            rows_scanned=data.rows_scanned,
        )
    return run_backtest(data, settings, overrides=overrides, compare=compare, move_pct=move_pct)


def day_bounds(day: date | str) -> tuple[int, int]:
    """``2024-08-05`` -> epoch ms of [that day 00:00 UTC, next day 00:00 UTC)."""
    d = date.fromisoformat(day) if isinstance(day, str) else day
    start = datetime(d.year, d.month, d.day, tzinfo=UTC)
    return int(start.timestamp() * 1000), int((start + timedelta(days=1)).timestamp() * 1000)


def backtest_day(
    url: str,
    settings: Settings,
    day: date | str,
    *,
    symbols: Sequence[str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    compare: Mapping[str, Any] | None = None,
    move_pct: float = DEFAULT_MOVE_PCT,
) -> BacktestRun:
    """Synchronous backtest of one UTC day partition from the database at `url` (for Dagster).

    ``run.days`` is the per-symbol table, ``run.summary()`` the headline numbers.
    """
    start_ms, end_ms = day_bounds(day)

    async def go(pool: asyncpg.Pool) -> BacktestRun:
        return await backtest_range(
            pool,
            settings,
            start_ms=start_ms,
            end_ms=end_ms,
            symbols=symbols,
            overrides=overrides,
            compare=compare,
            move_pct=move_pct,
        )

    return run_with_pool(url, go, max_size=1)
