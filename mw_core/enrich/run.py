"""The enrichment use case the Dagster ``alert_enrichments`` asset runs: enrich -> store -> publish.

Contract:
- No dagster import (see CONTRIBUTING.md): the asset calls `enrich_and_publish` under
  ``asyncio.run`` and turns the returned `EnrichmentRun` into metadata. The call owns its pool,
  LLM client and Kafka producer and closes them, so no event loop or connection outlives it.
- Publishing happens only after the rows are committed, and only for the rows this call stored
  (`EnrichReport.rows`), so a re-run never publishes an enrichment twice. The records are
  follow-ups of alerts already on the topic (``"type": "enrichment"``, see
  `service.encode_enrichment`).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from mw_core.adapters.bus import with_producer
from mw_core.adapters.postgres.pool import create_pool
from mw_core.config import Settings
from mw_core.enrich.service import EnrichReport, enrich_pending_async, publish_enrichments


@dataclass(frozen=True, slots=True)
class EnrichmentRun:
    report: EnrichReport
    published: int
    by_symbol: dict[str, int]


async def enrich_and_publish(
    database_url: str, settings: Settings, *, limit: int, publish: bool
) -> EnrichmentRun:
    """Enrich up to `limit` pending alerts (`enrich_pending_async`) and publish the new rows."""
    pool = await create_pool(database_url, min_size=1, max_size=2)
    try:
        report = await enrich_pending_async(pool, settings, limit=limit)
    finally:
        await pool.close()
    published = 0
    if publish and report.rows:
        published = await with_producer(
            settings, lambda p: publish_enrichments(p, settings.topic_alerts, report.rows)
        )
    by_symbol = Counter(r.event.symbol for r in report.rows)
    return EnrichmentRun(report=report, published=published, by_symbol=dict(by_symbol))
