"""The news domain's definitions, merged by `mw_dagster.definitions`."""

from __future__ import annotations

import dagster as dg

from mw_dagster.news.assets import headlines
from mw_dagster.news.checks import CHECKS
from mw_dagster.news.jobs import headlines_job

defs = dg.Definitions(assets=[headlines], asset_checks=CHECKS, jobs=[headlines_job])
