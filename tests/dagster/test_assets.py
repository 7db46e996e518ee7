"""Tier 2: assets and checks materialized with `dg.materialize` against the real test PostgreSQL."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime

import asyncpg
import dagster as dg
import pytest

from mw_core.adapters.postgres.prices import write_batch
from mw_core.adapters.postgres.schema import SCHEMA_VERSION
from mw_core.config import Settings
from mw_core.models import Anomaly, Tick
from mw_dagster.alerts.assets import alert_enrichments
from mw_dagster.infra.assets import db_schema
from mw_dagster.markets.assets import price_anomalies, prices
from mw_dagster.markets.checks import (
    price_anomalies_agreement,
    prices_coverage,
    prices_duplicate_rate,
    prices_staleness,
)
from mw_dagster.news.assets import AllFeedsFailed, headlines
from mw_dagster.news.checks import headlines_duplicate_rate, headlines_freshness
from mw_dagster.resources import KafkaResource, LLMResource, PostgresResource, RSSResource
from tests.dagster.helpers import consume_topic, insert_ticks, kline_ticks, rss, stream
from tests.fakes.feeds import Feed, FeedServer, Status
from tests.fakes.llm import FakeLLMServer

pytestmark = pytest.mark.integration

CRASH_DAY = "2024-08-05"
CRASH_SYMBOLS = ("BTCUSDT", "SOLUSDT", "ADAUSDT")


def _meta(result: dg.ExecuteInProcessResult, key: str) -> dict[str, object]:
    events = result.asset_materializations_for_node(key)
    assert events, f"no materialization of {key}"
    return {k: v.value for k, v in events[-1].metadata.items()}


def _checks(result: dg.ExecuteInProcessResult) -> dict[str, dg.AssetCheckEvaluation]:
    return {e.check_name: e for e in result.get_asset_check_evaluations()}


async def _fetch(url: str, sql: str, *args: object) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(url)
    try:
        return list(await conn.fetch(sql, *args))
    finally:
        await conn.close()


# --- infra ------------------------------------------------------------------------------------------


def test_db_schema_reports_version_timescale_and_counts(db_url: str) -> None:
    result = dg.materialize([db_schema], resources={"postgres": PostgresResource(database_url=db_url)})
    meta = _meta(result, "db_schema")
    assert meta["schema_version"] == SCHEMA_VERSION
    assert meta["timescale"] in (True, False)
    assert meta["migrations_applied_now"] == list(range(1, SCHEMA_VERSION + 1))
    assert meta["rows_prices"] == 0 and meta["rows_batch_anomalies"] == 0
    assert "| prices | 0 |" in str(meta["tables"])
    # Idempotent: nothing applied the second time.
    again = dg.materialize([db_schema], resources={"postgres": PostgresResource(database_url=db_url)})
    assert _meta(again, "db_schema")["migrations_applied_now"] == []


# --- markets ----------------------------------------------------------------------------------------


def test_crash_day_batch_agrees_with_the_stream(settings: Settings, db_url: str) -> None:
    ticks = [t for s in CRASH_SYMBOLS for t in kline_ticks(s)]
    asyncio.run(stream(settings, ticks))
    postgres = PostgresResource(database_url=db_url)

    result = dg.materialize(
        [prices, price_anomalies, price_anomalies_agreement],
        resources={"postgres": postgres},
        partition_key=CRASH_DAY,
    )

    meta = _meta(result, "price_anomalies")
    assert meta["rows_scanned"] == 3 * 1440 and meta["warmup_rows"] == 0 and meta["symbols"] == 3
    assert meta["minute_coverage_min"] == 1.0
    found = int(meta["anomalies_found"])  # type: ignore[call-overload]
    assert found > 10
    # The same detector over the same ticks: the stream and the batch agree exactly.
    assert meta["agreement_ratio"] == 1.0
    assert meta["agreement_both"] == found and meta["agreement_batch_only"] == 0
    assert meta["agreement_stream_only"] == 0
    # Episodes: the same policy in stream and batch gives the same alerts, and far fewer of them.
    raised = int(meta["alerts_raised"])  # type: ignore[call-overload]
    assert 3 <= raised <= 3 * 6 < found
    assert meta["episode_agreement_ratio"] == 1.0 and meta["episode_agreement_both"] == raised
    assert "open #1" in str(meta["episode_events"])
    assert "BTCUSDT" in str(meta["preview"]) and "| 2024-08-05 01:10:59 |" in str(meta["preview"])
    check = _checks(result)["price_anomalies_agreement"]
    assert check.passed, check.description

    rows = asyncio.run(
        _fetch(
            db_url,
            "SELECT symbol, ts, window_s, direction, partition_key FROM batch_anomalies "
            "WHERE symbol = 'BTCUSDT' ORDER BY ts",
        )
    )
    crash = [r for r in rows if r["ts"].hour == 1 and 8 <= r["ts"].minute <= 20]
    assert crash, rows
    assert crash[0]["ts"] == datetime(2024, 8, 5, 1, 10, 59, 999000, tzinfo=UTC)
    assert {r["direction"] for r in crash} >= {"down"}
    assert {r["partition_key"] for r in rows} == {CRASH_DAY}


def test_backfill_without_stream_is_idempotent_and_uses_warmup(
    postgres: PostgresResource, db_url: str
) -> None:
    # Two days of BTC: the 18th (calm) after the 5th would be a different day, so use the 5th
    # and check the 15-minute warm-up across midnight with the 4th's last ticks shifted in.
    ticks = kline_ticks("BTCUSDT")
    insert_ticks(postgres, ticks)
    shifted = [Tick("BTCUSDT", t.ts - 86_400_000, t.price, source="replay") for t in ticks[-20:]]
    insert_ticks(postgres, shifted)
    # A stream anomaly the batch also finds (and one it does not) to exercise the agreement counts.
    stream_hit = Anomaly("BTCUSDT", 1722820259999, 60, -0.033, "down", 56000.0, 0.02)
    stream_miss = Anomaly("BTCUSDT", 1722830000000, 60, 0.03, "up", 57000.0, 0.02)
    postgres.run(lambda pool: write_batch(pool, [], [], [stream_hit, stream_miss]))

    first = dg.materialize([price_anomalies], resources={"postgres": postgres}, partition_key=CRASH_DAY)
    second = dg.materialize([price_anomalies], resources={"postgres": postgres}, partition_key=CRASH_DAY)

    m1, m2 = _meta(first, "price_anomalies"), _meta(second, "price_anomalies")
    assert m1["warmup_rows"] == 15 and m1["rows_scanned"] == 1440 + 15
    assert m1["anomalies_found"] == m2["anomalies_found"]
    count = asyncio.run(_fetch(db_url, "SELECT count(*) AS n FROM batch_anomalies"))[0]["n"]
    assert count == m2["anomalies_found"]
    assert m2["agreement_both"] == 1 and m2["agreement_stream_only"] == 1
    assert m2["agreement_batch_only"] == int(m2["anomalies_found"]) - 1  # type: ignore[call-overload]
    assert 0 < float(m2["agreement_ratio"]) < 0.9  # type: ignore[arg-type]

    # The check flags the disagreement as an ERROR.
    check_run = dg.materialize(
        [price_anomalies, price_anomalies_agreement],
        resources={"postgres": postgres},
        partition_key=CRASH_DAY,
    )
    evaluation = _checks(check_run)["price_anomalies_agreement"]
    assert not evaluation.passed and evaluation.severity == dg.AssetCheckSeverity.ERROR


def test_partition_without_stream_anomalies_warns(postgres: PostgresResource) -> None:
    insert_ticks(postgres, kline_ticks("ADAUSDT"))
    instance = dg.DagsterInstance.ephemeral()
    # A later, empty day is materialized first: the check must look at its own run's day.
    later = dg.materialize(
        [price_anomalies, price_anomalies_agreement],
        resources={"postgres": postgres},
        partition_key="2024-08-06",
        instance=instance,
    )
    assert _checks(later)["price_anomalies_agreement"].passed
    result = dg.materialize(
        [price_anomalies, price_anomalies_agreement],
        resources={"postgres": postgres},
        partition_key=CRASH_DAY,
        instance=instance,
    )
    assert int(_meta(result, "price_anomalies")["anomalies_found"]) > 0  # type: ignore[call-overload]
    evaluation = _checks(result)["price_anomalies_agreement"]
    assert evaluation.metadata["partition"].value == CRASH_DAY
    assert not evaluation.passed and evaluation.severity == dg.AssetCheckSeverity.WARN


# --- checks on prices -------------------------------------------------------------------------------


def test_price_checks_pass_for_a_live_symbol_and_warn_for_a_silent_one(
    postgres: PostgresResource, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = int(time.time() * 1000)
    live = [Tick("BTCUSDT", now - i * 20_000, 60000.0 + i, base_volume=float(i)) for i in range(180)]
    insert_ticks(postgres, live)
    monkeypatch.setenv("MW_SYMBOLS", "BTCUSDT")
    all_checks: list[dg.AssetsDefinition | dg.AssetSpec] = [
        prices,
        prices_coverage,
        prices_staleness,
        prices_duplicate_rate,
    ]
    only_checks = dg.AssetSelection.all_asset_checks()  # `prices` is external: nothing to materialize
    checks = _checks(dg.materialize(all_checks, resources={"postgres": postgres}, selection=only_checks))
    assert checks["prices_coverage"].passed, checks["prices_coverage"].description
    assert checks["prices_staleness"].passed
    assert checks["prices_duplicate_rate"].passed
    assert checks["prices_duplicate_rate"].metadata["repeats"].value == 0

    # A re-sent frame (same price and volume, new ts) counts as a repeat; a silent symbol warns.
    prev = live[1]
    insert_ticks(postgres, [Tick("BTCUSDT", prev.ts + 10_000, prev.price, base_volume=prev.base_volume)])
    monkeypatch.setenv("MW_SYMBOLS", "BTCUSDT,ETHUSDT")
    checks = _checks(dg.materialize(all_checks, resources={"postgres": postgres}, selection=only_checks))
    assert checks["prices_duplicate_rate"].metadata["repeats"].value == 1
    for name in ("prices_coverage", "prices_staleness"):
        assert not checks[name].passed and checks[name].severity == dg.AssetCheckSeverity.WARN
        assert "ETHUSDT" in (checks[name].description or "")


def test_quality_checks_job_runs_every_data_check(
    postgres: PostgresResource, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hourly job of the code location itself, resources resolved from MW_DATABASE_URL."""
    from mw_dagster.definitions import defs

    monkeypatch.setenv("MW_DATABASE_URL", postgres.database_url)
    result = defs.resolve_job_def("quality_checks_job").execute_in_process(raise_on_error=False)
    assert set(_checks(result)) == {
        "prices_coverage",
        "prices_staleness",
        "prices_duplicate_rate",
        "headlines_freshness",
        "headlines_duplicate_rate",
    }
    assert not _checks(result)["headlines_freshness"].passed  # empty database: WARN, not a crash


# --- news -------------------------------------------------------------------------------------------


def test_headlines_store_publish_and_report_per_feed(
    postgres: PostgresResource, settings: Settings, db_url: str
) -> None:
    with FeedServer() as server:
        good = server.add("/a.xml", Feed(rss(("a1", "Bitcoin falls 5% | crash"), ("a2", "ETH rallies"))))
        dup = server.add("/b.xml", Feed(rss(("a1", "Bitcoin falls 5% | crash"), ("b1", "SOL news"))))
        broken = server.add("/broken.xml", Status(500))
        resources = {
            "postgres": postgres,
            "kafka": KafkaResource(bootstrap=settings.kafka_bootstrap, topic_news=settings.topic_news),
            "rss": RSSResource(feeds=",".join([good, dup, broken]), timeout_s=5),
        }
        first = dg.materialize(
            [headlines, headlines_freshness, headlines_duplicate_rate], resources=resources
        )
        second = dg.materialize([headlines], resources=resources)

    m1, m2 = _meta(first, "headlines"), _meta(second, "headlines")
    assert (m1["new"], m1["failed_feeds"], m1["published"]) == (3, 1, 3)
    per_feed = m1["per_feed_counts"]
    assert per_feed[good] == {"new": 2, "duplicate": 0, "failed": False}  # type: ignore[index]
    assert per_feed[dup] == {"new": 1, "duplicate": 1, "failed": False}  # type: ignore[index]
    assert per_feed[broken]["failed"] is True  # type: ignore[index]
    assert "HTTP 500" in str(m1["per_feed"])
    preview = str(m1["newest"])
    assert "Bitcoin falls 5% \\| crash" in preview and "<b>" not in preview
    assert (m2["new"], m2["published"], m2["duplicates"]) == (0, 0, 4)
    checks = _checks(first)
    assert checks["headlines_freshness"].passed, checks["headlines_freshness"].description
    assert checks["headlines_duplicate_rate"].passed

    published = asyncio.run(consume_topic(settings, settings.topic_news, expect=3))
    assert sorted(str(m["title"]) for m in published) == [
        "Bitcoin falls 5% | crash",
        "ETH rallies",
        "SOL news",
    ]


def test_headlines_fail_when_every_feed_fails(postgres: PostgresResource) -> None:
    """Every feed down = our network: the asset raises, and its RetryPolicy retries the run.

    Invoked directly (one attempt) so the test does not sit through the policy's backoff.
    """
    with FeedServer() as server:
        url = server.add("/gone.xml", Status(404))
        with pytest.raises(AllFeedsFailed, match="HTTP 404"):
            headlines(
                dg.build_asset_context(),
                postgres=postgres,
                kafka=KafkaResource(),
                rss=RSSResource(feeds=url),
            )
    policy = headlines.op.retry_policy
    assert policy is not None and policy.max_retries == 3 and policy.jitter == dg.Jitter.PLUS_MINUS


# --- alerts -----------------------------------------------------------------------------------------


def test_alert_enrichments_llm_caps_template_and_publish(
    postgres: PostgresResource, settings: Settings, db_url: str
) -> None:
    """One LLM call per alert (open / escalate event of the real stream), none per raw detection."""
    asyncio.run(stream(settings, [t for s in CRASH_SYMBOLS for t in kline_ticks(s)]))
    events = asyncio.run(_fetch(db_url, "SELECT episode_id, seq, kind FROM alert_events"))
    alerts = {(r["episode_id"], r["seq"]) for r in events if r["kind"] in ("open", "escalate")}
    (detections,) = asyncio.run(_fetch(db_url, "SELECT count(*) AS n FROM anomalies"))
    assert 3 <= len(alerts) < detections["n"]
    with FakeLLMServer(api_key="sk-test") as llm_server:
        resources = {
            "postgres": postgres,
            "kafka": KafkaResource(bootstrap=settings.kafka_bootstrap, topic_alerts=settings.topic_alerts),
            "llm": LLMResource(
                provider="openai",
                model="fake-model",
                base_url=llm_server.base_url,
                api_key="sk-test",
                max_calls_per_run=2,
            ),
        }
        result = dg.materialize([alert_enrichments], resources=resources)
        again = dg.materialize([alert_enrichments], resources=resources)
        calls = llm_server.calls

    meta = _meta(result, "alert_enrichments")
    n = len(alerts)
    assert (meta["stored"], meta["llm"], meta["template"], meta["llm_calls"]) == (n, 2, n - 2, 2)
    assert meta["fallback_reasons"] == {"budget_calls": n - 2}
    assert int(meta["total_tokens"]) > 0  # type: ignore[call-overload]
    assert meta["published"] == n
    assert calls == 2
    assert _meta(again, "alert_enrichments")["stored"] == 0
    # The topic: the stream's episode events, then exactly one follow-up per alert (none twice).
    records = asyncio.run(
        consume_topic(settings, settings.topic_alerts, expect=len(events) + n + 1, timeout=4.0)
    )
    follow_ups = [r for r in records if r["type"] == "enrichment"]
    assert len(records) - len(follow_ups) == len(events)
    assert sorted((str(r["episode_id"]), int(r["seq"])) for r in follow_ups) == sorted(alerts)  # type: ignore[call-overload]
    assert {r["symbol"] for r in follow_ups} == set(CRASH_SYMBOLS)
    assert {r["model"] for r in follow_ups} == {"fake-model", "template"}
