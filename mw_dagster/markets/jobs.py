"""Markets jobs: `price_anomalies_job`, one day (partition) of the batch reconciliation."""

from __future__ import annotations

import dagster as dg

from mw_dagster.markets.partitions import price_anomalies_partitions

price_anomalies_job = dg.define_asset_job(
    "price_anomalies_job",
    selection=dg.AssetSelection.keys("price_anomalies"),
    partitions_def=price_anomalies_partitions,
    description="Recompute one day of anomalies in batch (plus its checks).",
)
