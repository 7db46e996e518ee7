"""The Market Watch code location: the single `dg.Definitions` (loaded by ``workspace.yaml``).

Contract:
- The domains (infra, markets, news, alerts, maintenance) each hold their assets, checks, jobs,
  partitions and schedules and expose one ``defs``; this module merges them with the sensors
  (`sensors.build_sensors`) and the resources. The domains are imported as modules, not their
  ``defs``: Dagster refuses a code location module holding several Definitions.
- This is the only Dagster module that reads the environment: it builds the `Settings` once, when
  the code location loads (an invalid ``MW_*`` variable fails the load with a message naming it),
  and takes the resources' values and the sensors' intervals from it. A blank variable counts as
  unset, as everywhere in `Settings`.
- Secrets and URLs are handed to the resources as ``dg.EnvVar`` (the UI shows the variable names,
  not the values). `MW_DATABASE_URL` is required at run time. Kafka and the LLM key are optional:
  when `MW_KAFKA_BOOTSTRAP` is unset the assets store without publishing, and when
  `MW_LLM_API_KEY` is unset enrichment uses the template. Whether they are set is decided here,
  because an unset ``EnvVar`` would fail every run.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import dagster as dg

from mw_core.config import Settings, load_settings
from mw_core.notify.channels import ChannelConfigError, describe_channels
from mw_core.notify.routing import RoutingError
from mw_dagster.alerts import definitions as alerts
from mw_dagster.alerts.delivery import channel_checks
from mw_dagster.infra import definitions as infra
from mw_dagster.maintenance import definitions as maintenance
from mw_dagster.markets import definitions as markets
from mw_dagster.news import definitions as news
from mw_dagster.resources import KafkaResource, LLMResource, PostgresResource, RSSResource
from sensors import build_sensors


def _env_var_if_set(env: Mapping[str, str], name: str) -> dg.EnvVar | None:
    """``dg.EnvVar(name)`` when the variable is set and not blank (value resolved per run), else None."""
    return dg.EnvVar(name) if env.get(name, "").strip() else None


def build_resources(settings: Settings, env: Mapping[str, str]) -> dict[str, dg.ConfigurableResource]:  # type: ignore[type-arg]
    """The resources of the code location: values from `settings`, secrets and URLs from `env` names."""
    # Without a key (and without an explicit MW_LLM_PROVIDER) say "template" rather than name a
    # provider that will never be called.
    explicit_provider = "llm_provider" in settings.model_fields_set
    rss_feeds = env.get("MW_RSS_FEEDS")
    return {
        "postgres": PostgresResource(database_url=dg.EnvVar("MW_DATABASE_URL")),
        "kafka": KafkaResource(
            bootstrap=_env_var_if_set(env, "MW_KAFKA_BOOTSTRAP"),
            topic_news=settings.topic_news,
            topic_alerts=settings.topic_alerts,
        ),
        "llm": LLMResource(
            provider=settings.llm_provider
            if explicit_provider or _env_var_if_set(env, "MW_LLM_API_KEY")
            else "template",
            model=settings.llm_model,
            base_url=_env_var_if_set(env, "MW_LLM_BASE_URL"),
            api_key=_env_var_if_set(env, "MW_LLM_API_KEY"),
            timeout_s=settings.llm_timeout_s,
            max_calls_per_run=settings.llm_max_calls_per_run,
            max_tokens_per_run=settings.llm_max_tokens_per_run,
        ),
        # MW_RSS_FEEDS set but blank = no feeds (Settings would fall back to its defaults).
        "rss": RSSResource(
            feeds=dg.EnvVar("MW_RSS_FEEDS") if rss_feeds else "",
            enabled=rss_feeds is None or bool(rss_feeds.strip()),
        ),
    }


settings = load_settings()


def configured_channels(settings: Settings) -> list[tuple[str, str]]:
    """The notifier's channels (hashed id, masked name); none when their configuration is invalid.

    A bad MW_NOTIFY_URLS is the notifier's error to report (`mw notify`, `mw doctor`); the code
    location still loads, and the aggregate `notification_delivery_health` check keeps watching.
    """
    try:
        return describe_channels(settings)
    except (ChannelConfigError, RoutingError):
        return []


defs = dg.Definitions.merge(
    infra.defs,
    markets.defs,
    news.defs,
    alerts.defs,
    maintenance.defs,
    dg.Definitions(
        asset_checks=channel_checks(configured_channels(settings)),
        sensors=build_sensors(settings),
        resources=build_resources(settings, os.environ),
    ),
)
