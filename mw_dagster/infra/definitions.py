"""The infra domain's definitions, merged by `mw_dagster.definitions`."""

from __future__ import annotations

import dagster as dg

from mw_dagster.infra.assets import db_schema, service_health

defs = dg.Definitions(assets=[db_schema, service_health])
