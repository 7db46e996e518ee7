"""Dagster resources: one `ConfigurableResource` per outside system.

Contract:
- Typed fields only; secrets and URLs come through ``dg.EnvVar`` in `definitions.py`, so the UI
  shows the variable name, never the value.
- Methods are synchronous and keyword-only, return domain records, and run `mw_core` coroutines
  through `mw_core.batch.partition.run_with_pool` (``asyncio.run`` with one short-lived asyncpg pool per
  call). No event loop lives across calls, so a resource is safe in run workers, sensors (gRPC
  threads) and tests alike. No SQL and no coroutine is defined here (CONTRIBUTING.md: adapters
  own the SQL, asyncio stays in `mw_core`).
- Defaults are `Settings`' defaults (`_settings_default`), never copies; `mw_dagster.definitions`
  configures the resources from the `Settings` it builds at load time.
- `build_settings` turns resource fields into the one `mw_core.config.Settings` the `mw_core` code
  expects, once per run or sensor tick (`mw_core.config.load_settings`); everything a resource does
  not set (windows, thresholds, cooldown, symbols ...) comes from the ``MW_*`` variables exactly as
  for the streaming processor, so batch and stream share rules.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

import dagster as dg
from pydantic import Field

from mw_core.adapters.postgres import quality, schema
from mw_core.adapters.postgres.episodes import latest_alerts
from mw_core.batch import partition as batch
from mw_core.charts import reports
from mw_core.charts.model import Chart
from mw_core.config import ConfigError, Settings, load_settings
from mw_core.enrich.store import alert_events_after
from mw_core.markets.episodes import EpisodeEvent
from mw_core.news.store import existing_headline_ids

T = TypeVar("T")


def _settings_default(name: str) -> Any:
    """The default of `Settings` field `name`: a resource default is Settings', never a copy."""
    return Settings.model_fields[name].default


class PostgresResource(dg.ConfigurableResource):  # type: ignore[type-arg]
    """The Market Watch PostgreSQL database (the one the streaming processor writes)."""

    database_url: str = Field(description="asyncpg DSN, e.g. postgresql://user@host:5432/marketwatch.")
    pool_max_size: int = Field(default=4, description="Connections per call (one pool per call).")

    def run(self, fn: batch.PoolFn[T]) -> T:
        """Run the `mw_core` coroutine ``fn(pool)`` on a fresh pool (`mw_core.batch.partition.run_with_pool`)."""
        return batch.run_with_pool(self.database_url, fn, max_size=self.pool_max_size)

    # --- schema ------------------------------------------------------------------------------------
    def apply_schema(self) -> batch.SchemaOverview:
        """Apply the migrations idempotently; the schema state plus every table's row count."""
        return self.run(batch.apply_schema)

    def table_counts(self) -> dict[str, int]:
        return self.run(schema.table_counts)

    # --- price anomalies -------------------------------------------------------------------------
    def compute_partition(
        self, *, settings: Settings, key: str, start_ms: int, end_ms: int
    ) -> batch.PartitionRun:
        """Recompute one partition's `batch_anomalies` (`mw_core.batch.partition.compute_partition`)."""
        return self.run(
            lambda pool: batch.compute_partition(pool, settings, key=key, start_ms=start_ms, end_ms=end_ms)
        )

    def agreement(self, *, start_ms: int, end_ms: int) -> batch.Agreement:
        return self.run(lambda pool: batch.agreement(pool, start_ms=start_ms, end_ms=end_ms))

    # --- checks / sensors --------------------------------------------------------------------------
    def coverage(
        self, *, now_ms: int, lookback_s: int, symbols: Sequence[str]
    ) -> list[quality.SymbolCoverage]:
        return self.run(
            lambda pool: quality.coverage(pool, now_ms=now_ms, lookback_s=lookback_s, symbols=symbols)
        )

    def price_repeats(self, *, now_ms: int, lookback_s: int) -> quality.PriceDuplicates:
        return self.run(lambda pool: quality.price_repeats(pool, now_ms=now_ms, lookback_s=lookback_s))

    def headline_stats(self, *, now_ms: int, lookback_s: int) -> quality.HeadlineStats:
        return self.run(lambda pool: quality.headline_stats(pool, now_ms=now_ms, lookback_s=lookback_s))

    def alert_events_after(self, *, after_id: int, limit: int) -> list[tuple[int, str]]:
        return self.run(lambda pool: alert_events_after(pool, after_id=after_id, limit=limit))

    def existing_headline_ids(self, *, ids: Sequence[str]) -> set[str]:
        return self.run(lambda pool: existing_headline_ids(pool, ids))

    def price_flow(self, *, now_ms: int, window_s: int = 60) -> quality.PriceFlow:
        return self.run(lambda pool: quality.price_flow(pool, now_ms=now_ms, window_s=window_s))

    # --- charts (mw_core.charts.reports) -----------------------------------------------------------
    def alert_charts(
        self, *, events: Sequence[EpisodeEvent], cap: int, now_ms: int | None = None
    ) -> list[tuple[EpisodeEvent, Chart | str]]:
        """A chart (or the reason for none) per event, the first `cap` charted."""
        return self.run(lambda pool: reports.alert_charts(pool, events, cap, now_ms=now_ms))

    def latest_alerts(self, *, limit: int) -> list[EpisodeEvent]:
        return self.run(lambda pool: latest_alerts(pool, limit=limit))

    def overview_clock(self, *, settings: Settings, wall_ms: int) -> tuple[int, bool]:
        """``(now_ms, replayed)`` of the market overview (`mw_core.charts.reports.overview_clock`)."""
        return self.run(lambda pool: reports.overview_clock(pool, settings, wall_ms))

    def market_overview(self, *, settings: Settings, now_ms: int) -> reports.Overview:
        return self.run(lambda pool: reports.market_overview(pool, settings, now_ms))

    def daily_report(self, *, settings: Settings, day_start_ms: int, state_dir: Path) -> reports.Report:
        """Charts of one UTC day, written as HTML under ``state_dir/reports/``."""
        return self.run(lambda pool: reports.daily_report(pool, settings, day_start_ms, state_dir))


class KafkaResource(dg.ConfigurableResource):  # type: ignore[type-arg]
    """The Kafka cluster. Unset `bootstrap` = publishing disabled (assets say so in metadata)."""

    bootstrap: str | None = Field(default=None, description="Bootstrap servers (MW_KAFKA_BOOTSTRAP).")
    topic_news: str | None = Field(default=None, description="Headlines topic (default: Settings).")
    topic_alerts: str | None = Field(default=None, description="Enriched alerts topic (default: Settings).")

    @property
    def enabled(self) -> bool:
        return bool(self.bootstrap)

    def settings_overrides(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.bootstrap:
            out["kafka_bootstrap"] = self.bootstrap
        if self.topic_news:
            out["topic_news"] = self.topic_news
        if self.topic_alerts:
            out["topic_alerts"] = self.topic_alerts
        return out


class LLMResource(dg.ConfigurableResource):  # type: ignore[type-arg]
    """The LLM used to enrich alerts (OpenAI-compatible API) and the per-run spending caps."""

    # "template" (not Settings' "openai"): a resource built without a key never calls out.
    provider: Literal["openai", "gemini", "ollama", "template"] = Field(default="template")
    model: str = Field(default=_settings_default("llm_model"), description="LLM model name.")
    base_url: str | None = Field(default=None, description="OpenAI-compatible base URL.")
    api_key: str | None = Field(default=None, description="API key (dg.EnvVar('MW_LLM_API_KEY')).")
    timeout_s: float = Field(default=_settings_default("llm_timeout_s"), description="Per-request timeout.")
    max_calls_per_run: int = Field(
        default=_settings_default("llm_max_calls_per_run"), description="Cap on LLM calls per run."
    )
    max_tokens_per_run: int = Field(
        default=_settings_default("llm_max_tokens_per_run"), description="Cap on LLM tokens per run."
    )
    max_alerts_per_run: int = Field(default=200, description="Cap on alerts enriched per run.")

    def settings_overrides(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "llm_provider": self.provider,
            "llm_model": self.model,
            "llm_timeout_s": self.timeout_s,
            "llm_max_calls_per_run": self.max_calls_per_run,
            "llm_max_tokens_per_run": self.max_tokens_per_run,
            "llm_base_url": self.base_url,
            "llm_api_key": self.api_key or None,
        }
        return out


class RSSResource(dg.ConfigurableResource):  # type: ignore[type-arg]
    """The RSS/Atom feeds polled for headlines."""

    feeds: str = Field(default="", description="Feed URLs, comma-separated (MW_RSS_FEEDS). Empty: Settings.")
    enabled: bool = Field(default=True, description="False: no feeds at all (MW_RSS_FEEDS set but blank).")
    timeout_s: float = Field(default=15.0, description="Per-feed HTTP timeout.")

    @property
    def switched_off(self) -> bool:
        """``MW_RSS_FEEDS`` set but blank, or ``none`` (as in `mw_core.config.Settings`)."""
        return not self.enabled or self.feeds.strip().lower() == "none"

    @property
    def feed_list(self) -> list[str]:
        if self.switched_off:
            return []
        return [f.strip() for f in self.feeds.split(",") if f.strip()]

    def settings_overrides(self) -> dict[str, Any]:
        if self.switched_off:
            return {"rss_feeds": []}
        return {"rss_feeds": self.feed_list} if self.feed_list else {}


def build_settings(
    *,
    postgres: PostgresResource | None = None,
    kafka: KafkaResource | None = None,
    llm: LLMResource | None = None,
    rss: RSSResource | None = None,
) -> Settings:
    """The `Settings` for `mw_core` calls: resource fields override the ``MW_*`` environment.

    Raises:
        dagster.Failure: Invalid configuration, with ``allow_retries=False``: the assets' retry
            policies are for transient errors, and a bad variable stays bad on the next attempt.
    """
    overrides: dict[str, Any] = {}
    if postgres is not None:
        overrides["database_url"] = postgres.database_url
    for res in (kafka, llm, rss):
        if res is not None:
            overrides.update(res.settings_overrides())
    try:
        return load_settings(**overrides)
    except ConfigError as exc:
        raise dg.Failure(description=str(exc), allow_retries=False) from None
