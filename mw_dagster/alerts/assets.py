"""Alerts assets: `alert_enrichments`, LLM summaries of the stream's anomalies.

It reads what it depends on in the graph: the stream's `anomalies` table (markets) and the
`headlines` around each anomaly (news); both are referenced by key, not imported.
"""

from __future__ import annotations

import asyncio

import dagster as dg
from dagster import AssetExecutionContext

from mw_core.enrich.run import enrich_and_publish
from mw_dagster._compat import resolve_annotations
from mw_dagster.formatting import iso_ms, md_table
from mw_dagster.resources import KafkaResource, LLMResource, PostgresResource, build_settings

# LLM hiccups are handled inside mw_core (LLMClient retries, then a template fallback whose reason is
# recorded). This policy covers the run itself failing on a transient outage (PostgreSQL restart,
# Kafka election): ~10 s, 20 s, 40 s, +-50 % jitter so parallel runs do not retry in lockstep. Bad
# configuration raises Failure(allow_retries=False) in build_settings and is not retried.
ENRICH_RETRY = dg.RetryPolicy(
    max_retries=3, delay=10, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS
)
PREVIEW = 15


@dg.asset(
    group_name="alerts",
    deps=["anomalies", "headlines"],
    kinds={"openai", "postgres", "kafka"},
    retry_policy=ENRICH_RETRY,
    pool="llm",
)
@resolve_annotations
def alert_enrichments(
    context: AssetExecutionContext,
    postgres: PostgresResource,
    kafka: KafkaResource,
    llm: LLMResource,
) -> dg.MaterializeResult[None]:
    """LLM-written context for the stream's anomalies, grounded in the headlines around each one.

    Enriches the pending anomalies (`mw_core.enrich`): cache first, then the LLM within the per-run
    call/token caps, with a deterministic template as the fallback whose reason is recorded. New
    rows go to `alert_enrichments` and are published to the alerts topic as enriched alerts.
    """
    settings = build_settings(postgres=postgres, kafka=kafka, llm=llm)
    run = asyncio.run(
        enrich_and_publish(
            postgres.database_url, settings, limit=llm.max_alerts_per_run, publish=kafka.enabled
        )
    )
    report = run.report
    context.log.info("enrichment: %s, published %d", report.metadata(), run.published)
    rows = sorted(report.rows, key=lambda r: r.anomaly.ts, reverse=True)[:PREVIEW]
    preview = md_table(
        ["time (UTC)", "symbol", "move", "model", "summary"],
        [
            (iso_ms(r.anomaly.ts), r.anomaly.symbol, f"{r.anomaly.ret * 100:+.2f}%", r.model, r.summary)
            for r in rows
        ],
    )
    meta = report.metadata()
    return dg.MaterializeResult(
        metadata={
            "model": report.model,
            "stored": len(report.rows),
            "llm": report.llm,
            "template": report.template,
            "cached": report.cached,
            "fallback_reasons": dg.MetadataValue.json(dict(report.fallbacks)),
            "llm_calls": report.llm_calls,
            "prompt_tokens": report.prompt_tokens,
            "completion_tokens": report.completion_tokens,
            "total_tokens": report.total_tokens,
            "latency_ms_median": meta.get("latency_ms_median") or 0.0,
            "latency_ms_max": meta.get("latency_ms_max") or 0.0,
            "published": run.published,
            "caps": dg.MetadataValue.json(
                {
                    "max_alerts_per_run": llm.max_alerts_per_run,
                    "max_calls_per_run": llm.max_calls_per_run,
                    "max_tokens_per_run": llm.max_tokens_per_run,
                }
            ),
            "by_symbol": dg.MetadataValue.json(run.by_symbol),
            "preview": dg.MetadataValue.md(preview if rows else "_nothing new to enrich_"),
            "duration_ms": round(report.duration_ms, 1),
        }
    )
