"""The alerts domain's definitions, merged by `mw_dagster.definitions`."""

from __future__ import annotations

import dagster as dg

from mw_dagster.alerts import delivery
from mw_dagster.alerts.assets import alert_enrichments, alert_events
from mw_dagster.alerts.jobs import alert_enrichments_job

defs = dg.Definitions.merge(
    dg.Definitions(assets=[alert_events, alert_enrichments], jobs=[alert_enrichments_job]), delivery.defs
)
