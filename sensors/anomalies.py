"""`new_anomalies_sensor`: request `alert_enrichments_job` runs for new alerts since the cursor.

An alert is what a person receives: an ``open`` or ``escalate`` episode event the stream stored
in `alert_events` and published (raw detections and ``close`` events never trigger a run; the
sensor keeps its historical name).

Cursor: ``events:<id>``, the newest `alert_events.id` already requested (none = start at 0). Ids
are an identity column, so "id > cursor" is "new since the last tick". A cursor of another shape
(an `anomalies.id` of earlier versions) restarts at 0: the run enriches only what is pending, so
that costs nothing twice. The cursor only triggers runs: an event published after a later one
(an orphaned outbox row) is still enriched, by the next run, which selects everything pending.
Each request names its id range in the run key, so a re-evaluated tick never launches the same
run twice.
"""

from __future__ import annotations

import dagster as dg
from dagster import SensorEvaluationContext

from mw_core.batch.partition import UndefinedTable
from mw_dagster.resources import PostgresResource

BATCH = 500  # alerts per run request (the enrichment run itself caps LLM calls/tokens)
CURSOR_PREFIX = "events:"


def parse_cursor(cursor: str | None) -> int:
    if not cursor or not cursor.startswith(CURSOR_PREFIX):
        return 0
    try:
        return max(0, int(cursor[len(CURSOR_PREFIX) :]))
    except ValueError:
        return 0


def format_cursor(event_id: int) -> str:
    return f"{CURSOR_PREFIX}{event_id}"


def request_enrichments(context: SensorEvaluationContext, postgres: PostgresResource) -> dg.SensorResult:
    """One tick: a run request for the alerts after the cursor's id (at most `BATCH`)."""
    after = parse_cursor(context.cursor)
    try:
        rows = postgres.alert_events_after(after_id=after, limit=BATCH)
    except UndefinedTable:
        # A fresh database: nothing can be new before the schema exists (db_schema / the processor).
        return dg.SensorResult(
            skip_reason="schema not applied yet (materialize db_schema)", cursor=format_cursor(after)
        )
    if not rows:
        return dg.SensorResult(skip_reason=f"no alerts after event id {after}", cursor=format_cursor(after))
    first, last = rows[0][0], rows[-1][0]
    symbols = sorted({symbol for _, symbol in rows})
    context.log.info("%d new alerts (event ids %d..%d): %s", len(rows), first, last, ", ".join(symbols[:20]))
    return dg.SensorResult(
        run_requests=[
            dg.RunRequest(
                # "events-", not the earlier "anomalies-": Dagster skips a run key it launched before.
                run_key=f"events-{first}-{last}",
                tags={"mw/event_ids": f"{first}-{last}", "mw/alerts": str(len(rows))},
            )
        ],
        cursor=format_cursor(last),
    )
