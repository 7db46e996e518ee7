"""PostgreSQL access for enrichment: alerts to enrich, nearby headlines, `alert_enrichments` rows.

Contract:
- What is enriched: the alerts a person receives, i.e. the `alert_events` rows of kind ``open``
  or ``escalate`` (never ``close`` events, never raw `anomalies` detections). Only events already
  on the alerts topic (``published_at`` set) are pending, so the enrichment follow-up never
  precedes its event on the topic.
- `pending_events(model=M)` lists those events, newest first, that have no enrichment row for
  ``M`` — and, unless ``retry_templates``, no ``template`` row either: a template fallback is
  final for that event, so a failing provider never makes later runs re-spend on old alerts.
  For ``M == "template"`` an event with any enrichment row is not pending.
- `save_enrichment` is idempotent (``ON CONFLICT (episode_id, seq, model) DO NOTHING``) and reports
  whether it inserted, so concurrent runs never publish the same enrichment twice.
- `alert_events_after` is the sensor's cursor walk over `alert_events.id` (same event filter).
- Static SQL with ``$n`` parameters only; timestamps travel as epoch milliseconds.
"""

from __future__ import annotations

from dataclasses import astuple, dataclass

import asyncpg

from mw_core.adapters.postgres.episodes import event_from_row
from mw_core.enrich.prompt import HEADLINE_WINDOW_S, HeadlineRef
from mw_core.markets.episodes import EpisodeEvent

TEMPLATE_MODEL = "template"


@dataclass(frozen=True, slots=True)
class StoredEnrichment:
    """One `alert_enrichments` row (fields in the order `save_enrichment` inserts them)."""

    episode_id: str
    seq: int
    model: str
    summary: str
    is_template: bool
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_ms: float | None = None


def _stored(r: asyncpg.Record) -> StoredEnrichment:
    # _CACHED and _OF_EPISODE select exactly the dataclass's columns, already typed by asyncpg.
    return StoredEnrichment(**dict(r))


# The columns `event_from_row` reads, of published open / escalate `alert_events` still to enrich.
_PENDING = """
SELECT ev.id, ev.episode_id, ev.seq, ev.kind, ev.symbol, (extract(epoch FROM ev.ts) * 1000)::int8 AS ts_ms,
       ev.window_s, ev.ret, ev.direction, ev.price, ev.threshold, ev.ref_price,
       (extract(epoch FROM ev.ref_ts) * 1000)::int8 AS ref_ts_ms, ev.peak_ret, ev.peak_window_s,
       ev.extreme_price, (extract(epoch FROM ev.opened_at) * 1000)::int8 AS opened_ms, ev.summary
FROM alert_events ev
WHERE ev.kind IN ('open', 'escalate') AND ev.published_at IS NOT NULL
  AND NOT EXISTS (
    SELECT 1 FROM alert_enrichments e
    WHERE e.episode_id = ev.episode_id AND e.seq = ev.seq
      AND (e.model = $2 OR ($2 = 'template') OR (e.model = 'template' AND NOT $3::bool))
  )
ORDER BY ev.ts DESC, ev.id DESC
LIMIT $1
"""

_AFTER_ID = """
SELECT id, symbol FROM alert_events
WHERE kind IN ('open', 'escalate') AND published_at IS NOT NULL AND id > $1
ORDER BY id
LIMIT $2
"""

_HEADLINES = """
SELECT title, source, published, sentiment
FROM headlines
WHERE symbols @> ARRAY[$1::text]
  AND published BETWEEN timestamptz 'epoch' + ($2::int8 - $3::int8 * 1000) * interval '1 millisecond'
                    AND timestamptz 'epoch' + ($2::int8 + $3::int8 * 1000) * interval '1 millisecond'
ORDER BY abs(extract(epoch FROM published) * 1000 - $2::int8), published, id
LIMIT $4
"""

_CACHED = """
SELECT episode_id, seq, model, summary, is_template, prompt_tokens, completion_tokens, latency_ms
FROM alert_enrichments WHERE episode_id = $1 AND seq = $2 AND model = $3
"""

_OF_EPISODE = """
SELECT episode_id, seq, model, summary, is_template, prompt_tokens, completion_tokens, latency_ms
FROM alert_enrichments WHERE episode_id = $1 ORDER BY seq, model
"""

_INSERT = """
INSERT INTO alert_enrichments
    (episode_id, seq, model, summary, is_template, prompt_tokens, completion_tokens, latency_ms)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
ON CONFLICT (episode_id, seq, model) DO NOTHING
RETURNING seq
"""


async def pending_events(
    pool: asyncpg.Pool, *, limit: int, model: str, retry_templates: bool = False
) -> list[EpisodeEvent]:
    """Up to `limit` published open / escalate events still to enrich with `model`, newest first."""
    return [event_from_row(r) for r in await pool.fetch(_PENDING, limit, model, retry_templates)]


async def alert_events_after(pool: asyncpg.Pool, *, after_id: int, limit: int) -> list[tuple[int, str]]:
    """Up to `limit` ``(alert_events.id, symbol)`` of published open / escalate events with
    ``id > after_id``, oldest first (the sensor's cursor walk)."""
    return [(int(r["id"]), r["symbol"]) for r in await pool.fetch(_AFTER_ID, after_id, limit)]


async def headlines_for(
    pool: asyncpg.Pool, symbol: str, ts_ms: int, window_s: int = HEADLINE_WINDOW_S, *, limit: int = 50
) -> list[HeadlineRef]:
    """Headlines tagged `symbol` published within +-`window_s` of `ts_ms`, closest first (ties: earlier)."""
    rows = await pool.fetch(_HEADLINES, symbol, ts_ms, window_s, limit)
    return [
        HeadlineRef(
            title=r["title"],
            source=r["source"],
            published=r["published"],
            sentiment=float(r["sentiment"]) if r["sentiment"] is not None else None,
        )
        for r in rows
    ]


async def cached_enrichment(
    pool: asyncpg.Pool, *, episode_id: str, seq: int, model: str
) -> StoredEnrichment | None:
    """The stored enrichment of event ``(episode_id, seq)`` by `model`, if any."""
    r = await pool.fetchrow(_CACHED, episode_id, seq, model)
    return _stored(r) if r is not None else None


async def save_enrichment(pool: asyncpg.Pool, row: StoredEnrichment) -> bool:
    """Insert one enrichment; False when (episode_id, seq, model) was already stored (nothing changes)."""
    inserted = await pool.fetchval(_INSERT, *astuple(row))
    return inserted is not None


async def enrichments_of(pool: asyncpg.Pool, episode_id: str) -> list[StoredEnrichment]:
    """All stored enrichments of one episode, by seq then model."""
    return [_stored(r) for r in await pool.fetch(_OF_EPISODE, episode_id)]
