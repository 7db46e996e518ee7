"""`new_anomalies_sensor`: request `alert_enrichments_job` runs for anomalies the stream stored since the cursor.

Cursor: the newest `anomalies.id` already requested (decimal string; none = start at 0). Ids are
an identity column, so "id > cursor" is exactly "new since the last tick". Each request names its
id range in the run key, so a re-evaluated tick never launches the same run twice.
"""

from __future__ import annotations

import dagster as dg
from dagster import SensorEvaluationContext

from mw_core.batch.partition import UndefinedTable
from mw_dagster.resources import PostgresResource

BATCH = 500  # anomalies per run request (the enrichment run itself caps LLM calls/tokens)


def parse_cursor(cursor: str | None) -> int:
    try:
        return max(0, int(cursor)) if cursor else 0
    except ValueError:
        return 0


def request_enrichments(context: SensorEvaluationContext, postgres: PostgresResource) -> dg.SensorResult:
    """One tick: a run request for the anomalies after the cursor's id (at most `BATCH`)."""
    after = parse_cursor(context.cursor)
    try:
        rows = postgres.anomalies_after(after_id=after, limit=BATCH)
    except UndefinedTable:
        # A fresh database: nothing can be new before the schema exists (db_schema / the processor).
        return dg.SensorResult(
            skip_reason="schema not applied yet (materialize db_schema)", cursor=str(after)
        )
    if not rows:
        return dg.SensorResult(skip_reason=f"no anomalies after id {after}", cursor=str(after))
    first, last = rows[0][0], rows[-1][0]
    symbols = sorted({a.symbol for _, a in rows})
    context.log.info("%d new anomalies (ids %d..%d): %s", len(rows), first, last, ", ".join(symbols[:20]))
    return dg.SensorResult(
        run_requests=[
            dg.RunRequest(
                run_key=f"anomalies-{first}-{last}",
                tags={"mw/anomaly_ids": f"{first}-{last}", "mw/anomalies": str(len(rows))},
            )
        ],
        cursor=str(last),
    )
