"""The Market Watch code location: the single `dg.Definitions` (loaded by ``workspace.yaml``).

Resources are configured from the ``MW_*`` environment through ``dg.EnvVar`` (the UI shows the
variable names, not the values). `MW_DATABASE_URL` is required at run time. Kafka and the LLM
key are optional: when `MW_KAFKA_BOOTSTRAP` is unset the assets store without publishing, and
when `MW_LLM_API_KEY` is unset enrichment uses the template. Whether they are set is decided here,
at the entry point, because an unset ``EnvVar`` would fail every run.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import dagster as dg

from mw_dagster.assets.alerts import alert_enrichments
from mw_dagster.assets.infra import db_schema, prices, service_health
from mw_dagster.assets.markets import price_anomalies
from mw_dagster.assets.news import headlines
from mw_dagster.checks import ALL_CHECKS
from mw_dagster.jobs import (
    alert_enrichments_job,
    headlines_job,
    maintenance_job,
    price_anomalies_job,
    quality_checks_job,
)
from mw_dagster.resources import KafkaResource, LLMResource, PostgresResource, RSSResource
from mw_dagster.schedules import maintenance_schedule, price_anomalies_schedule, quality_checks_schedule
from sensors import ALL_SENSORS


def _env_or_default(env: Mapping[str, str], name: str, default: str | None = None) -> str | dg.EnvVar | None:
    """``dg.EnvVar(name)`` when the variable is set (value resolved per run), else `default`."""
    return dg.EnvVar(name) if env.get(name) else default


def build_resources(env: Mapping[str, str] | None = None) -> dict[str, object]:
    """The resources of the code location, from ``MW_*`` variables (see module docstring)."""
    env = os.environ if env is None else env
    provider = env.get("MW_LLM_PROVIDER", "openai" if env.get("MW_LLM_API_KEY") else "template")
    return {
        "postgres": PostgresResource(database_url=dg.EnvVar("MW_DATABASE_URL")),
        "kafka": KafkaResource(
            bootstrap=_env_or_default(env, "MW_KAFKA_BOOTSTRAP"),
            topic_news=_env_or_default(env, "MW_TOPIC_NEWS"),
            topic_alerts=_env_or_default(env, "MW_TOPIC_ALERTS"),
        ),
        "llm": LLMResource(
            provider=provider,  # type: ignore[arg-type]
            model=env.get("MW_LLM_MODEL", "gpt-4o-mini"),
            base_url=_env_or_default(env, "MW_LLM_BASE_URL"),
            api_key=_env_or_default(env, "MW_LLM_API_KEY"),
            max_calls_per_run=int(env.get("MW_LLM_MAX_CALLS_PER_RUN", "50")),
            max_tokens_per_run=int(env.get("MW_LLM_MAX_TOKENS_PER_RUN", "50000")),
        ),
        # MW_RSS_FEEDS set but blank = no feeds (Settings would fall back to its defaults).
        "rss": RSSResource(
            feeds=_env_or_default(env, "MW_RSS_FEEDS", "") or "",
            enabled=not ("MW_RSS_FEEDS" in env and not env["MW_RSS_FEEDS"].strip()),
        ),
    }


defs = dg.Definitions(
    assets=[db_schema, service_health, prices, price_anomalies, headlines, alert_enrichments],
    asset_checks=ALL_CHECKS,
    jobs=[price_anomalies_job, headlines_job, alert_enrichments_job, maintenance_job, quality_checks_job],
    schedules=[price_anomalies_schedule, maintenance_schedule, quality_checks_schedule],
    sensors=ALL_SENSORS,
    resources=build_resources(),
)
