"""Fixtures of the chart builders' tests: the crash day's prices and its real episode events."""

from __future__ import annotations

import pytest

from mw_core.batch.backtest import backtest_files
from mw_core.config import load_settings
from mw_core.markets.episodes import EpisodeEvent
from tests.unit.charts.support import CRASH_FILES, CRASH_SYMBOLS, day_points


@pytest.fixture(scope="module")
def crash_series() -> dict[str, list[tuple[int, float]]]:
    return {s: day_points(f) for s, f in zip(CRASH_SYMBOLS, CRASH_FILES, strict=True)}


@pytest.fixture(scope="module")
def crash_events() -> list[EpisodeEvent]:
    """The episode events the analysis path raises on the crash day (default settings)."""
    run = backtest_files(CRASH_FILES, load_settings(symbols=list(CRASH_SYMBOLS)))
    assert run.events, "the crash day must raise alerts"
    return run.events
