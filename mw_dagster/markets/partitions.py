"""Partitions of the markets domain.

`price_anomalies_partitions` is daily (UTC): one partition = one calendar day of ticks, which is
the unit of Binance's kline dumps and of the backfills we run. A partition only exists once its
day is over (``end_offset=0``), so the schedule never computes a half day.
"""

from __future__ import annotations

import dagster as dg

from mw_core.models import dt_to_ms

PRICE_ANOMALIES_START = "2024-01-01"

price_anomalies_partitions = dg.DailyPartitionsDefinition(start_date=PRICE_ANOMALIES_START, timezone="UTC")


def partition_bounds_ms(window: dg.TimeWindow) -> tuple[int, int]:
    """[start, end) of a time-window partition as epoch milliseconds."""
    return dt_to_ms(window.start), dt_to_ms(window.end)
