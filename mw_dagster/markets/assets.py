"""Markets assets: the stream's tables `prices` and `anomalies`, and their batch reconciliation.

`prices` and `anomalies` are external assets: the streaming processor (`mw_core.processor`) writes
them continuously, outside Dagster. `price_anomalies` recomputes one day of `anomalies` in batch
from `prices` (into `batch_anomalies`) and measures the agreement of the two.
"""

from __future__ import annotations

from collections import Counter

import dagster as dg
from dagster import AssetExecutionContext

from mw_core.batch.partition import Agreement, PartitionRun
from mw_dagster._compat import resolve_annotations
from mw_dagster.formatting import iso_ms, md_table
from mw_dagster.markets.partitions import partition_bounds_ms, price_anomalies_partitions
from mw_dagster.resources import PostgresResource, build_settings

PREVIEW_ROWS = 25

prices = dg.AssetSpec(
    "prices",
    group_name="markets",
    deps=["db_schema"],
    description=(
        "Ticks of every watched symbol, written continuously by the streaming processor "
        "(Binance -> Kafka -> processor -> PostgreSQL `prices`). External to Dagster: its checks "
        "watch coverage, staleness and re-sent frames."
    ),
    kinds={"postgres", "kafka"},
)

anomalies = dg.AssetSpec(
    "anomalies",
    group_name="markets",
    deps=[prices],
    description=(
        "Anomalies the streaming processor detects as the ticks arrive (window returns over their "
        "thresholds, one per symbol per cooldown), stored in PostgreSQL `anomalies`. On start-up the "
        "processor rehydrates its windows from `prices`. External to Dagster: "
        "the processor turns them into alert episodes (`alert_events`), `price_anomalies` reconciles it in batch."
    ),
    kinds={"postgres"},
)


@dg.asset(
    group_name="markets",
    partitions_def=price_anomalies_partitions,
    deps=[prices, anomalies],
    kinds={"postgres", "python"},
    code_version="1",
)
@resolve_annotations
def price_anomalies(context: AssetExecutionContext, postgres: PostgresResource) -> dg.MaterializeResult[None]:
    """Anomalies of one UTC day recomputed in batch from `prices` into `batch_anomalies`.

    Reads the day's ticks plus the longest window before it (warm-up) in one set-based query, runs
    the analysis path the streaming processor runs (`mw_core.markets.analysis`: same admission,
    windows, thresholds and cooldown from `Settings`, cooldown seeded from the alerts before the
    day) and replaces the day's rows atomically, so re-runs and backfills are idempotent. The same
    pass runs the episode policy (open episodes rebuilt from the detections before the day). The
    metadata compares the detections with the stream's `anomalies` and the alerts (episode opens
    and escalations) with the stream's `alert_events` for the same day.
    """
    settings = build_settings(postgres=postgres)
    pdef = price_anomalies_partitions
    keys = list(context.partition_keys)
    days: list[PartitionRun] = []
    for key in keys:
        start_ms, end_ms = partition_bounds_ms(pdef.time_window_for_partition_key(key))
        day = postgres.compute_partition(settings=settings, key=key, start_ms=start_ms, end_ms=end_ms)
        context.log.info(
            "partition %s: %d rows scanned (%d warm-up), %d symbols, %d anomalies, agreement %.3f "
            "(both=%d batch-only=%d stream-only=%d), read %.2fs detect %.2fs write %.2fs",
            key,
            day.rows_scanned,
            day.warmup_rows,
            day.symbols,
            len(day.anomalies),
            day.agreement.ratio,
            day.agreement.both,
            day.agreement.batch_only,
            day.agreement.stream_only,
            day.read_s,
            day.detect_s,
            day.write_s,
        )
        days.append(day)
    return dg.MaterializeResult(metadata=partition_metadata(days))


def partition_metadata(days: list[PartitionRun]) -> dict[str, dg.MetadataValue | int | float | str]:
    """Materialization metadata of one run (one day, or the days of a backfill range together)."""
    found = [a for d in days for a in d.anomalies]
    coverage = [c for d in days for c in d.coverage]
    agreement = Agreement.total([d.agreement for d in days])
    episodes = Agreement.total([d.episode_agreement for d in days])
    events = [e for d in days for e in d.events]
    alerts = [e for e in events if e.kind != "close"]
    alerts_table = md_table(
        ["time (UTC)", "symbol", "event", "episode", "window", "return", "price"],
        [
            (
                iso_ms(e.ts),
                e.symbol,
                f"{e.kind} #{e.seq}",
                e.episode_id,
                f"{e.window_s}s",
                f"{e.ret * 100:+.2f}%",
                f"{e.price:g}",
            )
            for e in sorted(events, key=lambda e: (e.ts, e.symbol, e.seq))[:PREVIEW_ROWS]
        ],
    )
    by_window = Counter(a.window_s for a in found)
    by_symbol = Counter(a.symbol for a in found)
    preview = sorted(found, key=lambda a: (a.ts, a.symbol, a.window_s))[:PREVIEW_ROWS]
    table = md_table(
        ["time (UTC)", "symbol", "window", "return", "direction", "price", "threshold"],
        [
            (
                iso_ms(a.ts),
                a.symbol,
                f"{a.window_s}s",
                f"{a.ret * 100:+.2f}%",
                a.direction,
                f"{a.price:g}",
                f"{a.threshold * 100:.2f}%",
            )
            for a in preview
        ],
    )
    return {
        "partitions": ", ".join(d.key for d in days),
        "rows_scanned": sum(d.rows_scanned for d in days),
        "warmup_rows": sum(d.warmup_rows for d in days),
        "symbols": max((d.symbols for d in days), default=0),
        "anomalies_found": len(found),
        "anomalies_by_window": dg.MetadataValue.json({str(k): v for k, v in sorted(by_window.items())}),
        "top_symbols": dg.MetadataValue.json(dict(by_symbol.most_common(10))),
        "minute_coverage_min": round(min(coverage), 4) if coverage else 0.0,
        "minute_coverage_mean": round(sum(coverage) / len(coverage), 4) if coverage else 0.0,
        "preview": dg.MetadataValue.md(table if found else "_no anomalies in this partition_"),
        "agreement_both": agreement.both,
        "agreement_batch_only": agreement.batch_only,
        "agreement_stream_only": agreement.stream_only,
        "agreement_ratio": round(agreement.ratio, 4),
        "stream_anomalies": agreement.stream_total,
        "episodes_opened": sum(1 for e in events if e.kind == "open"),
        "alerts_raised": len(alerts),
        "alerts_by_symbol": dg.MetadataValue.json(dict(Counter(e.symbol for e in alerts).most_common(10))),
        "episode_events": dg.MetadataValue.md(
            alerts_table if events else "_no episode events in this partition_"
        ),
        "episode_agreement_both": episodes.both,
        "episode_agreement_batch_only": episodes.batch_only,
        "episode_agreement_stream_only": episodes.stream_only,
        "episode_agreement_ratio": round(episodes.ratio, 4),
        "read_s": round(sum(d.read_s for d in days), 3),
        "detect_s": round(sum(d.detect_s for d in days), 3),
        "write_s": round(sum(d.write_s for d in days), 3),
    }
