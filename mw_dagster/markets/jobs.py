"""Markets jobs: `price_anomalies_job` (one day of the batch reconciliation), `market_overview_job`
(the market now) and `market_report_job` (one day's report)."""

from __future__ import annotations

import dagster as dg

from mw_dagster.markets.partitions import price_anomalies_partitions

price_anomalies_job = dg.define_asset_job(
    "price_anomalies_job",
    selection=dg.AssetSelection.keys("price_anomalies"),
    partitions_def=price_anomalies_partitions,
    description="Recompute one day of anomalies in batch (plus its checks).",
)

market_overview_job = dg.define_asset_job(
    "market_overview_job",
    selection=dg.AssetSelection.keys("market_overview"),
    description="Refresh the market overview: per-symbol table, top movers, 24 h chart with alerts.",
)

market_report_job = dg.define_asset_job(
    "market_report_job",
    selection=dg.AssetSelection.keys("market_report"),
    partitions_def=price_anomalies_partitions,
    description="Chart one UTC day per symbol with its episodes and write the HTML report.",
)
