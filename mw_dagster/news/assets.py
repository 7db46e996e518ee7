"""News assets: `headlines` from the RSS/Atom feeds."""

from __future__ import annotations

import asyncio

import dagster as dg
from dagster import AssetExecutionContext

from mw_core.news.run import ingest_headlines
from mw_dagster._compat import resolve_annotations
from mw_dagster.formatting import md_table
from mw_dagster.resources import KafkaResource, PostgresResource, RSSResource, build_settings

PREVIEW = 10

# Feeds and Kafka fail transiently (timeouts, 5xx, broker elections): retry the whole run.
NETWORK_RETRY = dg.RetryPolicy(
    max_retries=3, delay=5, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS
)


class AllFeedsFailed(RuntimeError):
    """No configured feed could be read: probably our network, worth a retry."""


@dg.asset(
    group_name="news", deps=["db_schema"], kinds={"rss", "postgres", "kafka"}, retry_policy=NETWORK_RETRY
)
@resolve_annotations
def headlines(
    context: AssetExecutionContext,
    postgres: PostgresResource,
    kafka: KafkaResource,
    rss: RSSResource,
) -> dg.MaterializeResult[None]:
    """Crypto news headlines from the configured RSS/Atom feeds, sanitized, scored and symbol-tagged.

    Fetches every feed (`mw_core.news.collect`), stores the items idempotently by id in
    `headlines` and publishes only the newly stored ones to the news topic. A broken feed is
    reported in the metadata and does not fail the others; the run fails (and is retried) only
    when every feed failed.
    """
    settings = build_settings(postgres=postgres, kafka=kafka, rss=rss)
    if not settings.rss_feeds:
        return dg.MaterializeResult(
            metadata={"feeds": 0, "new": 0, "note": "no feeds configured (MW_RSS_FEEDS)"}
        )
    run = asyncio.run(
        ingest_headlines(
            postgres.database_url, settings, timeout_s=rss.timeout_s, publish=kafka.enabled, preview=PREVIEW
        )
    )
    for feed in run.feeds:
        if feed.error:
            context.log.warning("feed %s failed: %s", feed.source, feed.error)
    if run.failed == len(run.feeds):
        raise AllFeedsFailed("; ".join(f"{f.source}: {f.error}" for f in run.feeds))
    feeds_table = md_table(
        ["feed", "items", "new", "duplicate", "status"],
        [
            (f.source, f.items, f.new, f.duplicates, f"failed: {f.error}" if f.error else "ok")
            for f in run.feeds
        ],
    )
    preview = md_table(
        ["published (UTC)", "source", "title", "symbols", "sentiment"],
        [
            (
                h.published.strftime("%Y-%m-%d %H:%M") if h.published else "",
                h.source,
                h.title,
                " ".join(h.symbols),
                f"{h.sentiment:+.2f}",
            )
            for h in run.newest
        ],
    )
    return dg.MaterializeResult(
        metadata={
            "feeds": len(run.feeds),
            "new": len(run.new_ids),
            "duplicates": sum(f.duplicates for f in run.feeds),
            "failed_feeds": run.failed,
            "published": run.published,
            "kafka": "on" if kafka.enabled else "off (MW_KAFKA_BOOTSTRAP unset)",
            "per_feed": dg.MetadataValue.md(feeds_table),
            "per_feed_counts": dg.MetadataValue.json(
                {
                    f.source: {"new": f.new, "duplicate": f.duplicates, "failed": f.error is not None}
                    for f in run.feeds
                }
            ),
            "newest": dg.MetadataValue.md(preview if run.newest else "_no headlines stored yet_"),
        }
    )
