"""`market_backtest`: the stream's analysis + episodes over a stored day, two settings side by side."""

from __future__ import annotations

import dagster as dg
import pytest

from mw_dagster.markets.backtest import market_backtest
from mw_dagster.resources import PostgresResource
from tests.dagster.helpers import insert_ticks, kline_ticks

pytestmark = pytest.mark.integration


def test_crash_day_backtest_compares_episodes_with_one_alert_per_detection(
    postgres: PostgresResource,
) -> None:
    insert_ticks(postgres, [t for s in ("BTCUSDT", "SOLUSDT", "ADAUSDT") for t in kline_ticks(s)])

    result = dg.materialize(
        [market_backtest],
        resources={"postgres": postgres},
        partition_key="2024-08-05",
        run_config={"ops": {"market_backtest": {"config": {"compare": {"episodes_enabled": "false"}}}}},
    )

    meta = {
        k: v.value for k, v in result.asset_materializations_for_node("market_backtest")[-1].metadata.items()
    }
    # Issue targets with the default settings, on the real crash day.
    assert meta["symbols"] == 3 and meta["detections"] == 10 + 63 + 29
    assert int(meta["max_alerts_symbol_day"]) <= 6  # type: ignore[call-overload]
    assert meta["first_move_alerted_60s"] == 3 and meta["largest_move_alerted"] == 3
    # Without episodes every detection is an alert: what a person got before.
    assert meta["compare_alerts"] == meta["detections"] and meta["compare_max_alerts_symbol_day"] == 63
    assert "SOLUSDT" in str(meta["per_symbol"]) and "SOLUSDT" in str(meta["compare_per_symbol"])


def test_a_day_without_prices_reports_so(postgres: PostgresResource) -> None:
    result = dg.materialize([market_backtest], resources={"postgres": postgres}, partition_key="2024-08-10")
    meta = {
        k: v.value for k, v in result.asset_materializations_for_node("market_backtest")[-1].metadata.items()
    }
    assert meta["alerts"] == 0 and "no prices" in str(meta["per_symbol"])
