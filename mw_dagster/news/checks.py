"""News asset checks: freshness and duplicate titles of `headlines`.

Contract: each check is one SQL question to PostgreSQL (through `PostgresResource`), returns an
`AssetCheckResult` with the numbers behind the verdict as metadata, targets `headlines` by key and
WARNs (a feed can pause or repeat itself without anything being broken on our side).
"""

from __future__ import annotations

import time

import dagster as dg

from mw_dagster.formatting import iso_ms
from mw_dagster.resources import PostgresResource

HEADLINES = dg.AssetKey("headlines")

HEADLINES_MAX_AGE_S = 6 * 3600  # newest headline (published, else fetched) at most this old
HEADLINES_DUP_LOOKBACK_S = 24 * 3600
MAX_HEADLINE_DUP_RATE = 0.2


def _now_ms() -> int:
    return int(time.time() * 1000)


@dg.asset_check(asset=HEADLINES, description="The newest headline is at most 6 hours old.")
def headlines_freshness(postgres: PostgresResource) -> dg.AssetCheckResult:
    now = _now_ms()
    stats = postgres.headline_stats(now_ms=now, lookback_s=HEADLINES_DUP_LOOKBACK_S)
    newest = stats.newest_published or stats.newest_fetched
    age = None if newest is None else (now - newest) / 1000
    return dg.AssetCheckResult(
        passed=age is not None and age <= HEADLINES_MAX_AGE_S,
        severity=dg.AssetCheckSeverity.WARN,
        description="no headlines yet" if age is None else f"newest headline is {age / 3600:.1f} h old",
        metadata={
            "headlines": stats.total,
            "newest_published": iso_ms(stats.newest_published),
            "newest_fetched": iso_ms(stats.newest_fetched),
            "age_s": -1.0 if age is None else round(age, 1),
        },
    )


@dg.asset_check(
    asset=HEADLINES,
    description="Share of the last day's headlines whose normalized title another row already has.",
)
def headlines_duplicate_rate(postgres: PostgresResource) -> dg.AssetCheckResult:
    stats = postgres.headline_stats(now_ms=_now_ms(), lookback_s=HEADLINES_DUP_LOOKBACK_S)
    rate = stats.duplicate_rate
    return dg.AssetCheckResult(
        passed=rate <= MAX_HEADLINE_DUP_RATE,
        severity=dg.AssetCheckSeverity.WARN,
        description=f"{rate:.1%} duplicate titles among {stats.window_rows} headlines fetched in 24 h",
        metadata={
            "rows": stats.window_rows,
            "distinct_titles": stats.window_distinct_titles,
            "rate": round(rate, 4),
        },
    )


CHECKS = [headlines_freshness, headlines_duplicate_rate]
