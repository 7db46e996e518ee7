"""Alerts jobs: `alert_enrichments_job`, requested by `new_anomalies_sensor` for new alerts."""

from __future__ import annotations

import dagster as dg

alert_enrichments_job = dg.define_asset_job(
    "alert_enrichments_job",
    selection=dg.AssetSelection.keys("alert_enrichments"),
    description="Enrich new alerts (open / escalate episode events) with an LLM summary "
    "(requested by new_anomalies_sensor).",
)
