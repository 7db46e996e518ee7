"""Enrichment run: summarize pending alerts with the LLM (or the template) and store the result.

Contract:
- An alert is what a person receives: an episode event of kind ``open`` or ``escalate``
  (`alert_events`). ``close`` events and raw detections (`anomalies`) are never enriched, so there
  is at most one LLM call per alert and model.
- `enrich_pending_async(pool, settings, llm=..., limit=...)` takes up to `limit` pending events
  (see `store.pending_events`), and for each: checks the cache, fetches headlines within
  +-30 min, builds the grounded prompt, calls the LLM if the run `Budget` allows, vets the output,
  and stores one `alert_enrichments` row. The LLM row is stored under the model name; every
  fallback is stored under model ``template`` with ``is_template = true``. Fallback reasons:
  ``llm_disabled``, ``budget_calls``, ``budget_tokens``, ``transient_error``, ``permanent_error``,
  ``rejected_output``, ``circuit_open`` (the run stops calling the provider after a fatal
  permanent error such as 401, or after `max_consecutive_failures` transient failures in a row,
  so one outage cannot stretch a run to timeout x attempts x items).
- The returned `EnrichReport` holds the counts, token use, per-item latency and the newly stored
  rows; `publish_enrichments` sends those rows to the `alerts` topic as follow-up records
  (`encode_enrichment`, ``"type": "enrichment"``) that reference their event by
  ``(episode_id, seq)``. Rows another run stored first are counted as cached and never returned
  twice.
- The use case Dagster runs (own pool, then publish) is `mw_core.enrich.run.enrich_and_publish`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import orjson
from aiokafka import AIOKafkaProducer

from mw_core.config import Settings
from mw_core.enrich import store
from mw_core.enrich.llm import Completion, LLMClient, PermanentLLMError, TransientLLMError
from mw_core.enrich.prompt import (
    Budget,
    HeadlineRef,
    OutputRejected,
    build_messages,
    estimate_tokens,
    template_enrichment,
    vet_output,
)
from mw_core.enrich.store import TEMPLATE_MODEL, StoredEnrichment
from mw_core.markets.episodes import EpisodeEvent

log = logging.getLogger(__name__)

ALERT_KINDS = frozenset({"open", "escalate"})  # the events a person is alerted with


@dataclass(frozen=True, slots=True)
class EnrichmentRow:
    """One newly stored enrichment of an alert (episode event), ready to publish."""

    event: EpisodeEvent
    model: str
    summary: str
    is_template: bool
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_ms: float | None = None  # time spent on the LLM (retries included), None if not called
    fallback: str | None = None  # why the template replaced the LLM
    detail: str = ""

    @property
    def key(self) -> tuple[str, int]:
        """``(episode_id, seq)`` of the enriched event."""
        return self.event.key

    @property
    def stored(self) -> StoredEnrichment:
        """The `alert_enrichments` row this enrichment is saved as."""
        episode_id, seq = self.key
        row = (episode_id, seq, self.model, self.summary, self.is_template)
        return StoredEnrichment(*row, self.prompt_tokens, self.completion_tokens, self.latency_ms)


@dataclass(frozen=True, slots=True)
class EnrichReport:
    """Outcome of one enrichment run."""

    model: str  # the LLM model of the run, or "template"
    rows: tuple[EnrichmentRow, ...]
    llm: int
    template: int
    cached: int
    fallbacks: dict[str, int] = field(default_factory=dict)
    llm_calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    duration_ms: float = 0.0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @property
    def latencies_ms(self) -> dict[tuple[str, int], float]:
        """``(episode_id, seq)`` -> time spent on the LLM for it (items that called it)."""
        return {r.key: r.latency_ms for r in self.rows if r.latency_ms is not None}

    def metadata(self) -> dict[str, Any]:
        """Plain values for logs and Dagster `MaterializeResult` metadata."""
        lat = sorted(self.latencies_ms.values())
        return {
            "model": self.model,
            "stored": len(self.rows),
            "llm": self.llm,
            "template": self.template,
            "cached": self.cached,
            "fallbacks": dict(self.fallbacks),
            "llm_calls": self.llm_calls,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "latency_ms_max": round(lat[-1], 1) if lat else None,
            "latency_ms_median": round(lat[len(lat) // 2], 1) if lat else None,
            "duration_ms": round(self.duration_ms, 1),
        }


@dataclass(slots=True)
class _Run:
    """Mutable state of one run."""

    budget: Budget
    max_consecutive_failures: int
    rows: list[EnrichmentRow] = field(default_factory=list)
    llm: int = 0
    template: int = 0
    cached: int = 0
    fallbacks: Counter[str] = field(default_factory=Counter)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    consecutive_failures: int = 0
    circuit_detail: str = ""


async def enrich_events(
    pool: asyncpg.Pool,
    settings: Settings,
    events: Sequence[EpisodeEvent],
    *,
    llm: LLMClient | None,
    max_consecutive_failures: int = 2,
) -> EnrichReport:
    """Enrich the given alerts (``open`` / ``escalate`` events); `llm` None means template only.

    Args:
        pool: Database pool (schema applied; the events stored in `alert_events`).
        settings: Supplies the run budget (`llm_max_calls_per_run`, `llm_max_tokens_per_run`).
        events: Alerts to enrich, in processing order; ``close`` events are skipped (not alerts).
        llm: The client to call, or None for template summaries without any HTTP call.
        max_consecutive_failures: Transient failures in a row after which the run stops calling.
    """
    started = time.perf_counter()
    model = llm.model if llm is not None else TEMPLATE_MODEL
    run = _Run(budget=Budget.from_settings(settings), max_consecutive_failures=max_consecutive_failures)
    for event in events:
        if event.kind in ALERT_KINDS:
            await _enrich_one(pool, run, llm, event)
    report = EnrichReport(
        model=model,
        rows=tuple(run.rows),
        llm=run.llm,
        template=run.template,
        cached=run.cached,
        fallbacks=dict(run.fallbacks),
        llm_calls=run.budget.calls,
        prompt_tokens=run.prompt_tokens,
        completion_tokens=run.completion_tokens,
        duration_ms=(time.perf_counter() - started) * 1000.0,
    )
    log.info("enrichment run: %s", report.metadata())
    return report


async def _enrich_one(pool: asyncpg.Pool, run: _Run, llm: LLMClient | None, event: EpisodeEvent) -> None:
    model = llm.model if llm is not None else TEMPLATE_MODEL
    cached = await store.cached_enrichment(pool, episode_id=event.episode_id, seq=event.seq, model=model)
    if cached is not None:
        run.cached += 1
        return
    headlines = await store.headlines_for(pool, event.symbol, event.ts)
    if llm is None:
        await _save_template(pool, run, event, headlines, reason="llm_disabled")
        return
    if run.circuit_detail:
        await _save_template(pool, run, event, headlines, reason="circuit_open", detail=run.circuit_detail)
        return
    messages = build_messages(event, headlines)
    over = run.budget.check(estimate_tokens(messages) + llm.max_completion_tokens)
    if over is not None:
        await _save_template(pool, run, event, headlines, reason=over)
        return

    started = time.perf_counter()
    completion: Completion | None = None
    reason, detail = "", ""
    try:
        completion = await asyncio.to_thread(llm.complete, messages)
    except TransientLLMError as exc:
        reason, detail = "transient_error", str(exc)
        run.consecutive_failures += 1
        if run.consecutive_failures >= run.max_consecutive_failures:
            run.circuit_detail = f"{run.consecutive_failures} transient failures in a row ({exc.reason})"
    except PermanentLLMError as exc:
        reason, detail = "permanent_error", str(exc)
        if exc.fatal:
            run.circuit_detail = f"fatal provider error ({exc.reason})"
    spent_ms = (time.perf_counter() - started) * 1000.0

    if completion is None:
        run.budget.charge(tokens=0)
        await _save_template(pool, run, event, headlines, reason=reason, detail=detail, latency_ms=spent_ms)
        return
    run.consecutive_failures = 0
    run.budget.charge(tokens=completion.total_tokens)
    run.prompt_tokens += completion.prompt_tokens
    run.completion_tokens += completion.completion_tokens
    try:
        summary = vet_output(completion.text, event.symbol)
    except OutputRejected as exc:
        await _save_template(
            pool,
            run,
            event,
            headlines,
            reason="rejected_output",
            detail=str(exc),
            latency_ms=completion.latency_ms,
        )
        return
    usage = (completion.prompt_tokens, completion.completion_tokens, completion.latency_ms)
    row = EnrichmentRow(event, model, summary, False, *usage)
    if await _save(pool, row):
        run.llm += 1
        run.rows.append(row)
    else:
        run.cached += 1


async def _save_template(
    pool: asyncpg.Pool,
    run: _Run,
    event: EpisodeEvent,
    headlines: Sequence[HeadlineRef],
    *,
    reason: str,
    detail: str = "",
    latency_ms: float | None = None,
) -> None:
    row = EnrichmentRow(
        event=event,
        model=TEMPLATE_MODEL,
        summary=template_enrichment(event, headlines),
        is_template=True,
        latency_ms=latency_ms,
        fallback=reason,
        detail=detail,
    )
    if not await _save(pool, row):
        run.cached += 1
        return
    run.template += 1
    run.fallbacks[reason] += 1
    run.rows.append(row)
    if reason != "llm_disabled":
        log.warning(
            "alert %s #%d: template summary (%s%s)",
            event.episode_id,
            event.seq,
            reason,
            f": {detail}" if detail else "",
        )


async def _save(pool: asyncpg.Pool, row: EnrichmentRow) -> bool:
    return await store.save_enrichment(pool, row.stored)


async def enrich_pending_async(
    pool: asyncpg.Pool,
    settings: Settings,
    *,
    llm: LLMClient | None = None,
    limit: int = 100,
    retry_templates: bool = False,
    max_consecutive_failures: int = 2,
) -> EnrichReport:
    """Enrich up to `limit` pending alerts (published ``open`` / ``escalate`` events).

    Args:
        pool: Database pool (schema applied).
        settings: LLM settings and run budget.
        llm: Client to use; None builds one from `settings` (closed afterwards), or uses the
            template when the settings disable the LLM.
        limit: Maximum alerts handled in this run, newest first.
        retry_templates: Also retry the LLM for alerts that already have a template fallback.
        max_consecutive_failures: See `enrich_events`.
    """
    owned = llm is None
    client = LLMClient.from_settings(settings) if owned else llm
    try:
        model = client.model if client is not None else TEMPLATE_MODEL
        events = await store.pending_events(pool, limit=limit, model=model, retry_templates=retry_templates)
        return await enrich_events(
            pool, settings, events, llm=client, max_consecutive_failures=max_consecutive_failures
        )
    finally:
        if owned and client is not None:
            client.close()


def encode_enrichment(row: EnrichmentRow) -> tuple[bytes, bytes]:
    """(key, value) of the follow-up record of an alert on the `alerts` topic.

    The key is the symbol, like the episode event's (`codec.encode_event`), so both land on the
    same partition and the follow-up is read after its event. Example value::

        {"type": "enrichment", "episode_id": "SOLUSDT-1722820079999", "seq": 1, "symbol": "SOLUSDT",
         "kind": "open", "ts": 1722820079999, "summary": "...", "model": "gpt-4o-mini",
         "is_template": false}
    """
    e = row.event
    body = {
        "type": "enrichment",
        "episode_id": e.episode_id,
        "seq": e.seq,
        "symbol": e.symbol,
        "kind": e.kind,
        "ts": e.ts,
        "summary": row.summary,
        "model": row.model,
        "is_template": row.is_template,
    }
    return e.symbol.encode(), orjson.dumps(body)


async def publish_enrichments(producer: AIOKafkaProducer, topic: str, rows: Sequence[EnrichmentRow]) -> int:
    """Send each row to `topic` as a follow-up record (`encode_enrichment`) and wait for all acks.

    Returns the number of records sent.
    """
    futures = []
    for row in rows:
        key, value = encode_enrichment(row)
        futures.append(await producer.send(topic, value, key=key))
    await asyncio.gather(*futures)
    return len(futures)
