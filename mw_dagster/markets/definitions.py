"""The markets domain's definitions, merged by `mw_dagster.definitions`."""

from __future__ import annotations

import dagster as dg

from mw_dagster.markets.assets import anomalies, price_anomalies, prices
from mw_dagster.markets.backtest import market_backtest
from mw_dagster.markets.checks import CHECKS
from mw_dagster.markets.jobs import market_overview_job, market_report_job, price_anomalies_job
from mw_dagster.markets.overview import market_overview
from mw_dagster.markets.report import market_report
from mw_dagster.markets.schedules import (
    market_overview_schedule,
    market_report_schedule,
    price_anomalies_schedule,
)

defs = dg.Definitions(
    assets=[prices, anomalies, price_anomalies, market_backtest, market_overview, market_report],
    asset_checks=CHECKS,
    jobs=[price_anomalies_job, market_overview_job, market_report_job],
    schedules=[price_anomalies_schedule, market_overview_schedule, market_report_schedule],
)
