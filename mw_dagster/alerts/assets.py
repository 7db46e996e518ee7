"""Alerts assets: the stream's `alert_events` and `alert_enrichments`, LLM summaries of each alert.

`alert_events` is external: the streaming processor turns raw detections (`anomalies`) into
episode events and publishes them to the alerts topic. `alert_enrichments` reads the alerts a
person receives there (``open`` / ``escalate`` events) and the `headlines` (news) around each,
referenced by key, not imported.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import dagster as dg
from dagster import AssetExecutionContext

from mw_core.charts.alert import window_label
from mw_core.charts.model import Chart
from mw_core.charts.render import pct
from mw_core.charts.reports import chart_order
from mw_core.enrich.run import enrich_and_publish
from mw_core.markets.episodes import EpisodeEvent
from mw_dagster._compat import resolve_annotations
from mw_dagster.formatting import chart_metadata, charts_markdown, iso_ms, md_table
from mw_dagster.resources import KafkaResource, LLMResource, PostgresResource, build_settings

# LLM hiccups are handled inside mw_core (LLMClient retries, then a template fallback whose reason is
# recorded). This policy covers the run itself failing on a transient outage (PostgreSQL restart,
# Kafka election): ~10 s, 20 s, 40 s, +-50 % jitter so parallel runs do not retry in lockstep. Bad
# configuration raises Failure(allow_retries=False) in build_settings and is not retried.
ENRICH_RETRY = dg.RetryPolicy(
    max_retries=3, delay=10, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS
)
PREVIEW = 15

alert_events = dg.AssetSpec(
    "alert_events",
    group_name="alerts",
    deps=["anomalies"],
    description=(
        "Episode events (open / escalate / close) the streaming processor derives from its raw "
        "detections, stored in PostgreSQL `alert_events` (the outbox, with `alert_episodes`) and "
        "published to the alerts topic. Open and escalate events are the alerts a person "
        "receives. External to Dagster: `new_anomalies_sensor` watches it."
    ),
    kinds={"postgres", "kafka"},
)


@dg.asset(
    group_name="alerts",
    deps=[alert_events, "headlines", "prices"],
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
    """LLM-written context for each alert (open / escalate episode event), grounded in headlines.

    Enriches the pending alerts (`mw_core.enrich`), one LLM call per alert: cache first, then the
    LLM within the per-run call/token caps, with a deterministic template as the fallback whose
    reason is recorded. Close events and raw detections are not enriched. New rows go to
    `alert_enrichments` and are published to the alerts topic as follow-ups of their event
    (``"type": "enrichment"``, with ``episode_id`` and ``seq``). The `charts` metadata holds a
    price chart per enriched alert (up to `MW_CHARTS_PER_RUN`, one per symbol first); a run that
    enriched nothing charts the latest alerts instead, so a materialization by hand always shows
    the current picture.
    """
    settings = build_settings(postgres=postgres, kafka=kafka, llm=llm)
    run = asyncio.run(
        enrich_and_publish(
            postgres.database_url, settings, limit=llm.max_alerts_per_run, publish=kafka.enabled
        )
    )
    report = run.report
    context.log.info("enrichment: %s, published %d", report.metadata(), run.published)
    rows = sorted(report.rows, key=lambda r: r.event.ts, reverse=True)[:PREVIEW]
    preview = md_table(
        ["time (UTC)", "symbol", "alert", "move", "model", "summary"],
        [
            (
                iso_ms(r.event.ts),
                r.event.symbol,
                f"{r.event.kind} #{r.event.seq}",
                f"{r.event.ret * 100:+.2f}%",
                r.model,
                r.summary,
            )
            for r in rows
        ],
    )
    meta = report.metadata()
    charts = alert_chart_metadata(postgres, [r.event for r in report.rows], cap=settings.charts_per_run)
    context.log.info("charts: %s", {k: v for k, v in charts.items() if k != "charts"})
    return dg.MaterializeResult(
        metadata={
            **charts,
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


def alert_heading(event: EpisodeEvent) -> str:
    """``BTCUSDT open #1 · 2024-08-05 01:10:59 UTC · -3.31% in 1 min``."""
    move = f"{pct(event.ret)} in {window_label(event.window_s)}"
    return f"{event.symbol} {event.kind} #{event.seq} · {iso_ms(event.ts)} UTC · {move}"


def alert_chart_metadata(
    postgres: PostgresResource, enriched: Sequence[EpisodeEvent], *, cap: int
) -> dict[str, dg.MetadataValue | str | int | float]:
    """The `charts` markdown (one section per alert) and the charts' numbers.

    The alerts this run enriched, or, when it enriched none, the latest `cap` alerts. Bad data
    never fails the run: a degraded chart says why, an alert without a chart gets its reason.
    """
    events, charts_of = list(enriched), "alerts enriched by this run"
    if not events and cap > 0:
        events = postgres.latest_alerts(limit=cap)
        charts_of = "latest alerts (this run enriched none)"
    charted = postgres.alert_charts(events=chart_order(events), cap=cap, now_ms=int(time.time() * 1000))
    rendered = [(e, c) for e, c in charted if isinstance(c, Chart)]
    return {
        "charts": dg.MetadataValue.md(
            charts_markdown([(alert_heading(e), c) for e, c in charted], empty="_no alert to chart_")
        ),
        "charts_of": charts_of,
        "charted_symbols": dg.MetadataValue.json(sorted({e.symbol for e, _ in rendered})),
        "charts_not_rendered": len(charted) - len(rendered),
        "charts_per_run": cap,
        **chart_metadata([c for _, c in rendered]),
    }
