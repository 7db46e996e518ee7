"""`mw backtest`: THE analysis + episode code over recorded klines or stored prices, no services.

Contract:
- Ticks: from kline dumps exactly as `mw replay` serves them: one tick per kline, ``ts`` = close
  time, ``price`` = close as sent (8 decimals); per symbol by open time, a later file wins a
  duplicate open time; prices above ``max_price`` are dropped like the ingest/processor do. Or
  from `prices` for ``[start, end)`` plus the warm-up the analysis needs before ``start`` (the
  longest window, plus the adaptive baseline's lookback in adaptive mode), read in one set-based
  query (`batch.partition.load_partition`).
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
    BatchStart,
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
    "BacktestOptions",
    "BacktestRun",
    "backtest_day",
    "backtest_db",
    "backtest_files",
    "backtest_range",
    "day_bounds",
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


def prices_from_files(sources: Sequence[str | Path], *, max_price: float) -> PartitionPrices:
    """The ticks `mw replay` produces for these dumps (see module docstring), per symbol.

    Raises:
        FileNotFoundError: A source does not exist (`replay.klines.resolve_sources`).
    """
    by_symbol: dict[str, dict[int, Kline]] = {}
    for f in read_sources(sources):
        rows = by_symbol.setdefault(f.symbol, {})
        for k in f.klines:
            rows[k.open_time] = k
    series: list[SymbolSeries] = []
    for symbol in sorted(by_symbol):
        rows = by_symbol[symbol]
        # The replay server sends ``c`` with 8 decimals (`replay.wire.mini_ticker_event`).
        closes = ((rows[t].close_time, float(f"{rows[t].close:.8f}")) for t in sorted(rows))
        pairs = [(ts, price) for ts, price in closes if price <= max_price]
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
        """Headline numbers (e.g. Dagster metadata): volume, recall, timing."""
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


@dataclass(frozen=True, slots=True)
class BacktestOptions:
    """What a backtest varies besides its ticks and base settings."""

    overrides: Mapping[str, Any] = field(default_factory=dict)  # --set: field name -> value
    compare: Mapping[str, Any] | None = None  # --compare: a second run with overrides + these
    symbols: Sequence[str] | None = None  # only these symbols (None: all)
    move_pct: float = DEFAULT_MOVE_PCT

    def configurations(self, settings: Settings) -> list[tuple[Settings, dict[str, Any]]]:
        """(settings, overrides) of the run and, with `compare`, of the second run.

        Raises:
            ConfigError: An override is invalid.
        """
        runs = [dict(self.overrides)]
        if self.compare is not None:
            runs.append({**self.overrides, **self.compare})
        return [(with_overrides(settings, o), o) for o in runs]


def run_backtest(
    data: PartitionPrices, settings: Settings, options: BacktestOptions | None = None
) -> BacktestRun:
    """Analyse `data` with `settings` + overrides (and the `compare` configuration when given).

    Raises:
        ConfigError: An override is invalid.
    """
    options = options or BacktestOptions()
    if options.symbols:
        wanted = set(options.symbols)
        data = replace(data, series=[s for s in data.series if s.symbol in wanted])
    runs = [_run(data, s, o, options.move_pct) for s, o in options.configurations(settings)]
    return runs[0] if len(runs) == 1 else replace(runs[0], compare=runs[1])


def _run(
    data: PartitionPrices, settings: Settings, overrides: dict[str, Any], move_pct: float
) -> BacktestRun:
    t0 = time.perf_counter()
    anomalies, events = detect_partition(data, settings, BatchStart())
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
    sources: Sequence[str | Path], settings: Settings, options: BacktestOptions | None = None
) -> BacktestRun:
    """Backtest kline dumps (or ``sample``).

    Raises:
        ConfigError: An override is invalid.
        FileNotFoundError: A source does not exist.
    """
    options = options or BacktestOptions()
    max_price = options.configurations(settings)[0][0].max_price
    return run_backtest(prices_from_files(sources, max_price=max_price), settings, options)


async def backtest_range(
    pool: asyncpg.Pool,
    settings: Settings,
    *,
    start_ms: int,
    end_ms: int,
    options: BacktestOptions | None = None,
) -> BacktestRun:
    """Backtest the stored `prices` of ``[start_ms, end_ms)`` (one query, warm-up included)."""
    options = options or BacktestOptions()
    warmup = max(warmup_s(s) for s, _ in options.configurations(settings))
    data = await load_partition(pool, start_ms=start_ms, end_ms=end_ms, warmup_s=warmup)
    return run_backtest(data, settings, options)


def backtest_db(
    url: str, settings: Settings, *, start_ms: int, end_ms: int, options: BacktestOptions | None = None
) -> BacktestRun:
    """Synchronous `backtest_range` on a short-lived pool on the database at `url`."""

    async def go(pool: asyncpg.Pool) -> BacktestRun:
        return await backtest_range(pool, settings, start_ms=start_ms, end_ms=end_ms, options=options)

    return run_with_pool(url, go, max_size=1)


def day_bounds(day: date | str) -> tuple[int, int]:
    """``2024-08-05`` -> epoch ms of [that day 00:00 UTC, next day 00:00 UTC)."""
    d = date.fromisoformat(day) if isinstance(day, str) else day
    start = datetime(d.year, d.month, d.day, tzinfo=UTC)
    return int(start.timestamp() * 1000), int((start + timedelta(days=1)).timestamp() * 1000)


def backtest_day(
    url: str, settings: Settings, day: date | str, options: BacktestOptions | None = None
) -> BacktestRun:
    """Synchronous backtest of one UTC day partition (``2024-08-05``) from the database (Dagster).

    ``run.days`` is the per-symbol table (`backtest_report.COLUMNS`), ``run.summary()`` the
    headline numbers; with ``options.compare``, ``run.compare`` holds the second configuration.
    """
    start_ms, end_ms = day_bounds(day)
    return backtest_db(url, settings, start_ms=start_ms, end_ms=end_ms, options=options)
