"""Markets asset checks: data quality of `prices`, and stream/batch agreement of `price_anomalies`.

Contract: each check is one SQL question to PostgreSQL (through `PostgresResource`), returns an
`AssetCheckResult` with the numbers behind the verdict as metadata, and targets its asset by key.
Checks of `prices` WARN (the stream can pause); the stream/batch disagreement is an ERROR because
it means the two detection paths diverged.
"""

from __future__ import annotations

import time

import dagster as dg
from dagster import AssetCheckExecutionContext

from mw_dagster._compat import resolve_annotations
from mw_dagster.formatting import iso_ms, md_table
from mw_dagster.markets.partitions import partition_bounds_ms, price_anomalies_partitions
from mw_dagster.resources import PostgresResource, build_settings

PRICES = dg.AssetKey("prices")
PRICE_ANOMALIES = dg.AssetKey("price_anomalies")

LOOKBACK_S = 3600  # "the last hour"
MIN_MINUTE_COVERAGE = 0.9  # share of the last hour's minutes with at least one tick, per symbol
MAX_STALENESS_S = 120  # newest tick of every symbol at most this old
MAX_REPEAT_RATE = 0.05  # re-sent identical frames among the last hour's ticks
MIN_AGREEMENT = 0.9
TABLE_ROWS = 50  # per-symbol tables show the worst symbols only (500 symbols would drown the UI)


def _now_ms() -> int:
    return int(time.time() * 1000)


@dg.asset_check(
    asset=PRICES, description="Every watched symbol has ticks in >= 90% of the last hour's minutes."
)
def prices_coverage(postgres: PostgresResource) -> dg.AssetCheckResult:
    settings = build_settings(postgres=postgres)
    now = _now_ms()
    rows = postgres.coverage(now_ms=now, lookback_s=LOOKBACK_S, symbols=settings.symbols)
    minutes = LOOKBACK_S // 60
    low = [r for r in rows if r.minutes_covered / minutes < MIN_MINUTE_COVERAGE]
    worst = sorted(rows, key=lambda r: (r.minutes_covered, r.symbol))[:TABLE_ROWS]
    table = md_table(
        ["symbol", "ticks (1 h)", "minutes covered", "coverage"],
        [(r.symbol, r.ticks, r.minutes_covered, f"{r.minutes_covered / minutes:.0%}") for r in worst],
    )
    return dg.AssetCheckResult(
        passed=not low,
        severity=dg.AssetCheckSeverity.WARN,
        description=(
            f"{len(low)} of {len(rows)} symbols below {MIN_MINUTE_COVERAGE:.0%} minute coverage: "
            + ", ".join(r.symbol for r in low[:20])
            if low
            else f"all {len(rows)} symbols covered"
        ),
        metadata={
            "symbols": len(rows),
            "symbols_below": len(low),
            "min_coverage": round(min((r.minutes_covered / minutes for r in rows), default=0.0), 4),
            "per_symbol": dg.MetadataValue.md(table),
        },
    )


@dg.asset_check(asset=PRICES, description="The newest tick of every watched symbol is at most 2 minutes old.")
def prices_staleness(postgres: PostgresResource) -> dg.AssetCheckResult:
    settings = build_settings(postgres=postgres)
    now = _now_ms()
    rows = postgres.coverage(now_ms=now, lookback_s=LOOKBACK_S, symbols=settings.symbols)
    ages = {r.symbol: None if r.newest_ts is None else (now - r.newest_ts) / 1000 for r in rows}
    stale = sorted(s for s, age in ages.items() if age is None or age > MAX_STALENESS_S)
    oldest = sorted(rows, key=lambda r: (r.newest_ts or 0, r.symbol))[:TABLE_ROWS]
    table = md_table(
        ["symbol", "newest tick (UTC)", "age"],
        [
            (r.symbol, iso_ms(r.newest_ts), "never" if ages[r.symbol] is None else f"{ages[r.symbol]:.0f} s")
            for r in oldest
        ],
    )
    known = [a for a in ages.values() if a is not None]
    return dg.AssetCheckResult(
        passed=not stale,
        severity=dg.AssetCheckSeverity.WARN,
        description=f"stale symbols: {', '.join(stale[:20])}" if stale else "all symbols fresh",
        metadata={
            "stale_symbols": len(stale),
            "max_age_s": round(max(known), 1) if known else -1.0,
            "per_symbol": dg.MetadataValue.md(table),
        },
    )


@dg.asset_check(
    asset=PRICES,
    description="Share of the last hour's ticks that repeat the previous frame exactly (re-sent).",
)
def prices_duplicate_rate(postgres: PostgresResource) -> dg.AssetCheckResult:
    dup = postgres.price_repeats(now_ms=_now_ms(), lookback_s=LOOKBACK_S)
    return dg.AssetCheckResult(
        passed=dup.rate <= MAX_REPEAT_RATE,
        severity=dg.AssetCheckSeverity.WARN,
        description=f"{dup.repeats} of {dup.ticks} ticks repeat the previous frame ({dup.rate:.2%})",
        metadata={"ticks": dup.ticks, "repeats": dup.repeats, "rate": round(dup.rate, 5)},
    )


@dg.asset_check(
    asset=PRICE_ANOMALIES,
    description=(
        "Stream (`anomalies`) and batch (`batch_anomalies`) agree on the run's day (else the latest "
        "materialized day): "
        "Jaccard ratio of (symbol, ts, window) keys >= 0.9."
    ),
)
@resolve_annotations
def price_anomalies_agreement(
    context: AssetCheckExecutionContext,
    postgres: PostgresResource,
) -> dg.AssetCheckResult:
    # In the partition's own run (schedule, backfill) check that partition; run alone, check the
    # latest materialized day.
    if context.has_partition_key:
        key = context.partition_key
    else:
        materialized = context.instance.get_materialized_partitions(PRICE_ANOMALIES)
        if not materialized:
            return dg.AssetCheckResult(
                passed=True, description="no partition materialized yet", metadata={"partition": ""}
            )
        key = max(materialized)
    start_ms, end_ms = partition_bounds_ms(price_anomalies_partitions.time_window_for_partition_key(key))
    ag = postgres.agreement(start_ms=start_ms, end_ms=end_ms)
    metadata = {
        "partition": key,
        "both": ag.both,
        "batch_only": ag.batch_only,
        "stream_only": ag.stream_only,
        "agreement_ratio": round(ag.ratio, 4),
    }
    if ag.stream_total == 0 and ag.batch_total > 0:
        # The stream wrote nothing for that day (processor down, day loaded by backfill): not a
        # divergence of the detectors, but worth a look.
        return dg.AssetCheckResult(
            passed=False,
            severity=dg.AssetCheckSeverity.WARN,
            description=f"{key}: batch found {ag.batch_total} anomalies, the stream none (was it running?)",
            metadata=metadata,
        )
    return dg.AssetCheckResult(
        passed=ag.ratio >= MIN_AGREEMENT,
        severity=dg.AssetCheckSeverity.ERROR,
        description=(
            f"{key}: agreement {ag.ratio:.3f} (both {ag.both}, batch-only {ag.batch_only}, "
            f"stream-only {ag.stream_only})"
        ),
        metadata=metadata,
    )


CHECKS = [prices_coverage, prices_staleness, prices_duplicate_rate, price_anomalies_agreement]
