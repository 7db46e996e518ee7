"""PostgreSQL access for enrichment: pending anomalies, nearby headlines, `alert_enrichments` rows.

Contract:
- Static SQL with ``$n`` parameters only; timestamps travel as epoch milliseconds.
- `pending_anomalies(model=M)` lists anomalies, newest first, that have no enrichment row for
  ``M`` — and, unless ``retry_templates``, no ``template`` row either: a template fallback is
  final for that anomaly, so a failing provider never makes later runs re-spend on old alerts.
  For ``M == "template"`` an anomaly with any enrichment row is not pending.
- `save_enrichment` is idempotent (``ON CONFLICT (anomaly_id, model) DO NOTHING``) and reports
  whether it inserted, so concurrent runs never publish the same enrichment twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg

from mw_core.adapters.postgres.anomalies import anomaly_from_row
from mw_core.enrich.prompt import HEADLINE_WINDOW_S, HeadlineRef
from mw_core.models import Anomaly

TEMPLATE_MODEL = "template"


@dataclass(frozen=True, slots=True)
class StoredEnrichment:
    """One `alert_enrichments` row."""

    anomaly_id: int
    model: str
    summary: str
    is_template: bool
    prompt_tokens: int
    completion_tokens: int
    latency_ms: float | None


def _stored(r: asyncpg.Record) -> StoredEnrichment:
    return StoredEnrichment(
        anomaly_id=int(r["anomaly_id"]),
        model=r["model"],
        summary=r["summary"],
        is_template=bool(r["is_template"]),
        prompt_tokens=int(r["prompt_tokens"]),
        completion_tokens=int(r["completion_tokens"]),
        latency_ms=r["latency_ms"],
    )


_PENDING = """
SELECT a.id, a.symbol, (extract(epoch FROM a.ts) * 1000)::int8 AS ts_ms, a.window_s, a.ret, a.direction,
       a.price, a.threshold, a.volatility, a.ref_price, (extract(epoch FROM a.ref_ts) * 1000)::int8 AS ref_ts_ms
FROM anomalies a
WHERE NOT EXISTS (
    SELECT 1 FROM alert_enrichments e
    WHERE e.anomaly_id = a.id
      AND (e.model = $2 OR ($2 = 'template') OR (e.model = 'template' AND NOT $3::bool))
)
ORDER BY a.ts DESC, a.id DESC
LIMIT $1
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
SELECT anomaly_id, model, summary, is_template, prompt_tokens, completion_tokens, latency_ms
FROM alert_enrichments WHERE anomaly_id = $1 AND model = $2
"""

_INSERT = """
INSERT INTO alert_enrichments
    (anomaly_id, model, summary, is_template, prompt_tokens, completion_tokens, latency_ms)
VALUES ($1, $2, $3, $4, $5, $6, $7)
ON CONFLICT (anomaly_id, model) DO NOTHING
RETURNING anomaly_id
"""


async def pending_anomalies(
    pool: asyncpg.Pool, *, limit: int, model: str, retry_templates: bool = False
) -> list[tuple[int, Anomaly]]:
    """Up to `limit` ``(anomaly id, Anomaly)`` still to enrich with `model`, newest first."""
    rows = await pool.fetch(_PENDING, limit, model, retry_templates)
    return [(int(r["id"]), anomaly_from_row(r)) for r in rows]


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


async def cached_enrichment(pool: asyncpg.Pool, *, anomaly_id: int, model: str) -> StoredEnrichment | None:
    """The stored enrichment of `anomaly_id` by `model`, if any."""
    r = await pool.fetchrow(_CACHED, anomaly_id, model)
    return _stored(r) if r is not None else None


async def save_enrichment(
    pool: asyncpg.Pool,
    *,
    anomaly_id: int,
    model: str,
    summary: str,
    is_template: bool,
    prompt_tokens: int = 0,
    completion_tokens: int = 0,
    latency_ms: float | None = None,
) -> bool:
    """Insert one enrichment; False when (anomaly_id, model) was already stored (nothing changes)."""
    inserted = await pool.fetchval(
        _INSERT, anomaly_id, model, summary, is_template, prompt_tokens, completion_tokens, latency_ms
    )
    return inserted is not None


async def enrichments_for(pool: asyncpg.Pool, anomaly_ids: Sequence[int]) -> list[StoredEnrichment]:
    """All stored enrichments of the given anomalies, by anomaly id then model."""
    rows = await pool.fetch(
        """
        SELECT anomaly_id, model, summary, is_template, prompt_tokens, completion_tokens, latency_ms
        FROM alert_enrichments WHERE anomaly_id = ANY($1::int8[]) ORDER BY anomaly_id, model
        """,
        list(anomaly_ids),
    )
    return [_stored(r) for r in rows]


_AFTER_ID = """
SELECT id, symbol, (extract(epoch FROM ts) * 1000)::int8 AS ts_ms, window_s, ret, direction, price,
       threshold, volatility, ref_price, (extract(epoch FROM ref_ts) * 1000)::int8 AS ref_ts_ms
FROM anomalies WHERE id > $1 ORDER BY id LIMIT $2
"""


async def anomalies_after(pool: asyncpg.Pool, *, after_id: int, limit: int) -> list[tuple[int, Anomaly]]:
    """Up to `limit` ``(id, Anomaly)`` with ``id > after_id``, oldest first (the sensor's cursor walk)."""
    rows = await pool.fetch(_AFTER_ID, after_id, limit)
    return [(int(r["id"]), anomaly_from_row(r)) for r in rows]
