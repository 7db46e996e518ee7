"""News jobs: `headlines_job`, requested by `rss_poll_sensor` when the feeds have new items."""

from __future__ import annotations

import dagster as dg

headlines_job = dg.define_asset_job(
    "headlines_job",
    selection=dg.AssetSelection.keys("headlines"),
    description="Fetch the feeds and store / publish new headlines (requested by rss_poll_sensor).",
)
