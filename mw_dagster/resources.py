"""Dagster resources: one `ConfigurableResource` per outside system.

Contract:
- Typed fields only; secrets and URLs come through ``dg.EnvVar`` in `definitions.py`, so the UI
  shows the variable name, never the value.
- Methods are synchronous and keyword-only, return domain records, and run the `mw_core` / `store`
  coroutines under ``asyncio.run`` (one short-lived asyncpg pool per call). No event loop lives
  across calls, so a resource is safe in run workers, sensors (gRPC threads) and tests alike.
- `build_settings` turns resource fields into the one `mw_core.config.Settings` the `mw_core` code
  expects; everything a resource does not set (windows, thresholds, cooldown, symbols ...) comes from
  the ``MW_*`` environment exactly as for the streaming processor, so batch and stream share rules.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import asyncpg
import dagster as dg
from pydantic import Field

from mw_core import db
from mw_core.config import ConfigError, Settings, load_settings
from mw_core.models import Anomaly
from mw_dagster import store

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class SchemaOverview:
    """Result of `PostgresResource.apply_schema`: the schema state plus our tables' row counts."""

    version: int
    timescale: bool
    applied: tuple[int, ...]
    counts: dict[str, int]


async def _with_pool(url: str, fn: Callable[[asyncpg.Pool], Awaitable[T]], max_size: int) -> T:
    pool = await db.create_pool(url, min_size=1, max_size=max_size)
    try:
        return await fn(pool)
    finally:
        await pool.close()


class PostgresResource(dg.ConfigurableResource):  # type: ignore[type-arg]
    """The Market Watch PostgreSQL database (the one the streaming processor writes)."""

    database_url: str = Field(description="asyncpg DSN, e.g. postgresql://user@host:5432/marketwatch.")
    pool_max_size: int = Field(default=4, description="Connections per call (one pool per call).")

    def run(self, fn: Callable[[asyncpg.Pool], Awaitable[T]]) -> T:
        """Run ``fn(pool)`` on a fresh pool under ``asyncio.run`` (the sync/async seam)."""
        return asyncio.run(_with_pool(self.database_url, fn, self.pool_max_size))

    # --- schema ------------------------------------------------------------------------------------
    def apply_schema(self) -> SchemaOverview:
        async def go(pool: asyncpg.Pool) -> SchemaOverview:
            info = await db.apply_schema(pool)
            counts = await db.table_counts(pool)
            return SchemaOverview(info.version, info.timescale, info.applied, counts)

        return self.run(go)

    def table_counts(self) -> dict[str, int]:
        return self.run(db.table_counts)

    # --- price anomalies -------------------------------------------------------------------------
    def load_partition(self, *, start_ms: int, end_ms: int, warmup_s: int) -> store.PartitionPrices:
        return self.run(
            lambda pool: store.load_partition(pool, start_ms=start_ms, end_ms=end_ms, warmup_s=warmup_s)
        )

    def cooldown_seeds(self, *, symbols: Sequence[str], start_ms: int, cooldown_s: int) -> dict[str, int]:
        return self.run(
            lambda pool: store.cooldown_seeds(pool, symbols, start_ms=start_ms, cooldown_s=cooldown_s)
        )

    def replace_batch_anomalies(
        self, *, partition_key: str, start_ms: int, end_ms: int, anomalies: Sequence[Anomaly]
    ) -> int:
        return self.run(
            lambda pool: store.replace_batch_anomalies(
                pool, partition_key=partition_key, start_ms=start_ms, end_ms=end_ms, anomalies=anomalies
            )
        )

    def agreement(self, *, start_ms: int, end_ms: int) -> store.Agreement:
        return self.run(lambda pool: store.agreement(pool, start_ms=start_ms, end_ms=end_ms))

    # --- checks / sensors --------------------------------------------------------------------------
    def coverage(self, *, now_ms: int, lookback_s: int, symbols: Sequence[str]) -> list[store.SymbolCoverage]:
        return self.run(
            lambda pool: store.coverage(pool, now_ms=now_ms, lookback_s=lookback_s, symbols=symbols)
        )

    def price_repeats(self, *, now_ms: int, lookback_s: int) -> store.PriceDuplicates:
        return self.run(lambda pool: store.price_repeats(pool, now_ms=now_ms, lookback_s=lookback_s))

    def headline_stats(self, *, now_ms: int, lookback_s: int) -> store.HeadlineStats:
        return self.run(lambda pool: store.headline_stats(pool, now_ms=now_ms, lookback_s=lookback_s))

    def anomalies_after(self, *, after_id: int, limit: int) -> list[tuple[int, Anomaly]]:
        return self.run(lambda pool: store.anomalies_after(pool, after_id=after_id, limit=limit))

    def existing_headline_ids(self, *, ids: Sequence[str]) -> set[str]:
        return self.run(lambda pool: store.existing_headline_ids(pool, ids))

    def price_flow(self, *, now_ms: int, window_s: int = 60) -> store.PriceFlow:
        return self.run(lambda pool: store.price_flow(pool, now_ms=now_ms, window_s=window_s))


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

    provider: Literal["openai", "gemini", "ollama", "template"] = Field(default="template")
    model: str = Field(default="gpt-4o-mini")
    base_url: str | None = Field(default=None, description="OpenAI-compatible base URL.")
    api_key: str | None = Field(default=None, description="API key (dg.EnvVar('MW_LLM_API_KEY')).")
    timeout_s: float = Field(default=20.0)
    max_calls_per_run: int = Field(default=50, description="Cap on LLM calls per run.")
    max_tokens_per_run: int = Field(default=50_000, description="Cap on LLM tokens per run.")
    max_alerts_per_run: int = Field(default=200, description="Cap on anomalies enriched per run.")

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
    def feed_list(self) -> list[str]:
        return [f.strip() for f in self.feeds.split(",") if f.strip()]

    def settings_overrides(self) -> dict[str, Any]:
        if not self.enabled:
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
