"""Tier 3: sensors, schedules and the maintenance job, evaluated against real servers.

Sensors run through `dg.build_sensor_context(cursor=..., instance=...)`; the assertions are on the
run requests and the new cursor. Feeds come from the local feed server, rows from the test database.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import asyncpg
import dagster as dg
import psutil
import pytest
from dagster._core.events import DagsterEvent

from mw_core.adapters.postgres.episodes import insert_events, mark_events_published, unpublished_events
from mw_core.adapters.postgres.prices import write_batch
from mw_core.config import load_settings
from mw_core.markets.episodes import EpisodeEvent, EventKind, episode_id
from mw_core.models import Anomaly, Tick
from mw_dagster.definitions import build_resources, defs
from mw_dagster.infra.health import report_service_health
from mw_dagster.maintenance.jobs import maintenance_job
from mw_dagster.news.assets import headlines
from mw_dagster.resources import KafkaResource, PostgresResource, RSSResource
from sensors import build_sensors
from sensors.rss import RSSCursor, run_key_for
from sensors.runs import worker_alive
from tests.dagster.helpers import insert_ticks, rss
from tests.fakes.feeds import Feed, FeedServer, Status

pytestmark = pytest.mark.integration

SENSORS = {s.name: s for s in build_sensors(load_settings())}
rss_poll_sensor = SENSORS["rss_poll_sensor"]
new_anomalies_sensor = SENSORS["new_anomalies_sensor"]
service_health_sensor = SENSORS["service_health_sensor"]
orphaned_runs_sensor = SENSORS["orphaned_runs_sensor"]


def _tick(
    sensor: dg.SensorDefinition, instance: dg.DagsterInstance, cursor: str | None, **resources: object
) -> dg.SensorResult:
    context = dg.build_sensor_context(cursor=cursor, instance=instance, resources=resources)
    result = sensor(context)
    assert isinstance(result, dg.SensorResult)
    return result


def _skip(result: dg.SensorResult) -> str:
    return (result.skip_reason.skip_message or "") if result.skip_reason else ""


# --- rss_poll_sensor --------------------------------------------------------------------------------


def test_rss_sensor_requests_new_items_then_skips_on_304(postgres: PostgresResource) -> None:
    instance = dg.DagsterInstance.ephemeral()
    with FeedServer() as server:
        feed = server.add("/a.xml", Feed(rss(("n1", "Bitcoin dips"), ("n2", "Ether rises"))))
        broken = server.add("/down.xml", Status(503))
        res = {"postgres": postgres, "rss": RSSResource(feeds=f"{feed},{broken}", timeout_s=5)}

        # First tick: both items are new -> one run, keyed by the hash of their ids.
        first = _tick(rss_poll_sensor, instance, None, **res)
        assert len(first.run_requests or []) == 1
        cursor = RSSCursor.loads(first.cursor)
        ids = cursor.feeds[feed].seen
        assert len(ids) == 2
        assert first.run_requests[0].run_key == run_key_for(ids)  # type: ignore[index]
        assert cursor.feeds[feed].etag and cursor.feeds[feed].last_modified
        assert cursor.pending_ids == ids
        assert broken in cursor.feeds and cursor.feeds[broken].etag is None

        # Second tick with that cursor: conditional GET -> 304 -> skip; the broken feed is named.
        second = _tick(rss_poll_sensor, instance, first.cursor, **res)
        assert not second.run_requests
        reason = _skip(second)
        assert "1 not modified" in reason and "down.xml" in reason and "503" in reason
        assert server.requests_to("/a.xml")[-1].headers["if-none-match"] == cursor.feeds[feed].etag

        # The requested run stores the items -> the next tick forgets them.
        dg.materialize(
            [headlines],
            resources={"postgres": postgres, "kafka": KafkaResource(), "rss": RSSResource(feeds=feed)},
        )
        third = _tick(rss_poll_sensor, instance, second.cursor, **res)
        assert not third.run_requests and RSSCursor.loads(third.cursor).pending_ids == []

        # A new item -> a run for just that id.
        server.set_body("/a.xml", rss(("n3", "Solana news"), ("n1", "Bitcoin dips"), ("n2", "Ether rises")))
        fourth = _tick(rss_poll_sensor, instance, third.cursor, **res)
        assert len(fourth.run_requests or []) == 1
        new = RSSCursor.loads(fourth.cursor).pending_ids
        assert new == ["https://news.example/n3"]
        assert fourth.run_requests[0].run_key == run_key_for(new)  # type: ignore[index]


def test_rss_sensor_re_requests_after_a_failed_run(postgres: PostgresResource) -> None:
    instance = dg.DagsterInstance.ephemeral()

    @dg.asset
    def boom() -> None:
        raise RuntimeError("simulated run failure")

    with FeedServer() as server:
        feed = server.add("/a.xml", Feed(rss(("x1", "Bitcoin dips"))))
        res = {"postgres": postgres, "rss": RSSResource(feeds=feed, timeout_s=5)}
        first = _tick(rss_poll_sensor, instance, None, **res)
        key = first.run_requests[0].run_key  # type: ignore[index]
        assert key is not None
        # The run the sensor asked for failed (same run key tag as a sensor-launched run).
        dg.materialize([boom], instance=instance, tags={"dagster/run_key": key}, raise_on_error=False)
        second = _tick(rss_poll_sensor, instance, first.cursor, **res)
    assert len(second.run_requests or []) == 1
    assert second.run_requests[0].run_key == f"{key}-retry1"  # type: ignore[index]
    assert json.loads(second.cursor or "{}")["pending"]["attempt"] == 1


def test_rss_sensor_without_feeds_skips(postgres: PostgresResource) -> None:
    rss_off = build_resources(load_settings(), {"MW_DATABASE_URL": "postgresql://x@h/d", "MW_RSS_FEEDS": ""})[
        "rss"
    ]
    assert isinstance(rss_off, RSSResource) and not rss_off.enabled
    result = _tick(
        rss_poll_sensor, dg.DagsterInstance.ephemeral(), "not json", postgres=postgres, rss=rss_off
    )
    assert not result.run_requests and "no feeds configured" in _skip(result)


# --- new_anomalies_sensor ---------------------------------------------------------------------------


def _event(symbol: str, ts: int, seq: int = 1, kind: EventKind = "open") -> EpisodeEvent:
    return EpisodeEvent(
        episode_id=episode_id(symbol, ts if seq == 1 else ts - 60_000),
        seq=seq,
        kind=kind,
        symbol=symbol,
        ts=ts,
        window_s=60,
        ret=-0.03,
        direction="down",
        price=100.0,
        threshold=0.02,
        ref_price=103.0,
        ref_ts=ts - 60_000,
        peak_ret=-0.03,
        peak_window_s=60,
        extreme_price=100.0,
        opened_ts=ts if seq == 1 else ts - 60_000,
        summary=f"{symbol} down -3.00% over 1 min; episode {kind}.",
    )


def _publish_events(postgres: PostgresResource, events: list[EpisodeEvent]) -> None:
    async def store(pool: asyncpg.Pool) -> None:
        async with pool.acquire() as conn, conn.transaction():
            await insert_events(conn, events)
        await mark_events_published(pool, [i for i, _ in await unpublished_events(pool)])

    postgres.run(store)


def test_new_anomalies_sensor_walks_the_alert_event_cursor(postgres: PostgresResource) -> None:
    """It triggers on new alerts (open / escalate episode events), not on raw detections."""
    instance = dg.DagsterInstance.ephemeral()
    t0 = 1722820259999
    raw = [Anomaly(s, t0, 60, -0.03, "down", 100.0, 0.02) for s in ("BTCUSDT", "ETHUSDT", "SOLUSDT")]
    postgres.run(lambda pool: write_batch(pool, [], [], raw))
    none = _tick(new_anomalies_sensor, instance, None, postgres=postgres)
    assert not none.run_requests and none.cursor == "events:0" and "after event id 0" in _skip(none)

    _publish_events(postgres, [_event(s, t0) for s in ("BTCUSDT", "ETHUSDT", "SOLUSDT")])
    first = _tick(new_anomalies_sensor, instance, none.cursor, postgres=postgres)
    assert [r.run_key for r in first.run_requests or []] == ["events-1-3"]
    assert first.cursor == "events:3"

    idle = _tick(new_anomalies_sensor, instance, first.cursor, postgres=postgres)
    assert not idle.run_requests and idle.cursor == "events:3" and "after event id 3" in _skip(idle)

    # A close event is not an alert; the escalation after it is.
    _publish_events(postgres, [_event("ETHUSDT", t0 + 3_600_000, 2, "close")])
    quiet = _tick(new_anomalies_sensor, instance, idle.cursor, postgres=postgres)
    assert not quiet.run_requests and quiet.cursor == "events:3"
    _publish_events(postgres, [_event("BTCUSDT", t0 + 120_000, 2, "escalate")])
    nxt = _tick(new_anomalies_sensor, instance, quiet.cursor, postgres=postgres)
    assert [r.run_key for r in nxt.run_requests or []] == ["events-5-5"] and nxt.cursor == "events:5"

    # A cursor of the earlier shape (an anomalies.id) restarts the walk instead of skipping alerts.
    legacy = _tick(new_anomalies_sensor, instance, "4", postgres=postgres)
    assert [r.run_key for r in legacy.run_requests or []] == ["events-1-5"]


# --- health -----------------------------------------------------------------------------------------


def test_service_health_sensor_observes_price_flow(postgres: PostgresResource) -> None:
    now = int(time.time() * 1000)
    insert_ticks(postgres, [Tick("BTCUSDT", now - i * 1000, 60000.0) for i in range(30)])
    result = _tick(service_health_sensor, dg.DagsterInstance.ephemeral(), None, postgres=postgres)
    assert not result.run_requests
    (event,) = result.asset_events
    assert event.asset_key == dg.AssetKey("service_health")
    meta = {k: v.value for k, v in event.metadata.items()}
    assert meta["status"] == "ok" and meta["ticks_last_60s"] == 30 and meta["symbols_flowing"] == 1


def test_report_service_health_into_an_instance() -> None:
    instance = dg.DagsterInstance.ephemeral()
    report_service_health(instance, service="processor", status="degraded", metrics={"lag": 12, "bad": [1]})  # type: ignore[dict-item]
    records = instance.fetch_observations(dg.AssetKey("service_health"), limit=1).records
    assert records
    obs = records[0].asset_observation
    assert obs is not None
    meta = {k: v.value for k, v in obs.metadata.items()}
    assert meta["service"] == "processor" and meta["status"] == "degraded" and meta["lag"] == 12
    assert "bad" not in meta  # only scalars are reported


# --- schedules and maintenance ----------------------------------------------------------------------


def test_price_anomalies_schedule_targets_the_day_that_just_ended() -> None:
    schedule = defs.resolve_schedule_def("price_anomalies_schedule")
    context = dg.build_schedule_context(scheduled_execution_time=datetime(2024, 8, 6, 0, 15, tzinfo=UTC))
    data = schedule.evaluate_tick(context)
    assert [r.partition_key for r in data.run_requests or []] == ["2024-08-05"]


def test_maintenance_job_deletes_old_runs() -> None:
    instance = dg.DagsterInstance.ephemeral()

    @dg.asset
    def trivial() -> None:
        return None

    dg.materialize([trivial], instance=instance)
    assert len(instance.get_run_records()) == 1
    result = maintenance_job.execute_in_process(
        instance=instance,
        run_config={"ops": {"purge_dagster_history": {"config": {"run_retention_days": 0}}}},
    )
    assert result.success
    assert result.output_for_node("purge_dagster_history") == 1
    assert [r.dagster_run.job_name for r in instance.get_run_records()] == ["maintenance_job"]


def test_sensors_on_a_database_without_schema_skip_or_report_down(db_url: str) -> None:
    """The daemon ticks sensors before anyone applied the schema: no FAILURE ticks for that."""
    bare = PostgresResource(database_url=db_url)
    instance = dg.DagsterInstance.ephemeral()
    anomalies = _tick(new_anomalies_sensor, instance, None, postgres=bare)
    assert not anomalies.run_requests and "schema not applied" in _skip(anomalies)
    health = _tick(service_health_sensor, instance, None, postgres=bare)
    (event,) = health.asset_events
    assert event.metadata["status"].value == "down" and "UndefinedTableError" in str(
        event.metadata["error"].value
    )


# --- orphaned_runs_sensor ---------------------------------------------------------------------------


@pytest.fixture
def local_instance() -> Iterator[dg.DagsterInstance]:
    """A persistent (sqlite) instance with the `DefaultRunLauncher`, as under the daemon."""
    with dg.instance_for_test() as instance:
        yield instance


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _started_run(instance: dg.DagsterInstance, job: dg.JobDefinition, *, pid: int) -> dg.DagsterRun:
    run = instance.create_run_for_job(job)
    start = DagsterEvent(event_type_value=dg.DagsterEventType.RUN_START.value, job_name=run.job_name, pid=pid)
    instance.report_dagster_event(start, run_id=run.run_id)
    started = instance.get_run_by_id(run.run_id)
    assert started is not None and started.status == dg.DagsterRunStatus.STARTED
    return started


def test_worker_alive_detects_gone_zombie_and_reused_pids() -> None:
    me = psutil.Process()
    assert worker_alive(os.getpid(), time.time())
    # Same pid, but our process was created long before that "run" started: pid reuse.
    assert not worker_alive(os.getpid(), me.create_time() - 3600)
    assert not worker_alive(_dead_pid(), time.time())


def test_orphaned_runs_sensor_fails_dead_workers_and_frees_their_slots(
    local_instance: dg.DagsterInstance,
) -> None:
    @dg.op
    def noop() -> None:
        return None

    @dg.job
    def chaos_job() -> None:
        noop()

    instance = local_instance
    storage = instance.event_log_storage
    storage.set_concurrency_slots("llm", 1)
    orphan = _started_run(instance, chaos_job, pid=_dead_pid())
    alive = _started_run(instance, chaos_job, pid=os.getpid())
    storage.claim_concurrency_slot("llm", orphan.run_id, "alert_enrichments")
    assert storage.get_concurrency_info("llm").active_slot_count == 1

    result = orphaned_runs_sensor(dg.build_sensor_context(instance=instance))
    assert isinstance(result, dg.SkipReason) and orphan.run_id in (result.skip_message or "")

    failed = instance.get_run_by_id(orphan.run_id)
    running = instance.get_run_by_id(alive.run_id)
    assert failed is not None and failed.status == dg.DagsterRunStatus.FAILURE
    assert running is not None and running.status == dg.DagsterRunStatus.STARTED
    assert storage.get_concurrency_info("llm").active_slot_count == 0

    again = orphaned_runs_sensor(dg.build_sensor_context(instance=instance))
    assert isinstance(again, dg.SkipReason) and "1 started runs, all workers alive" in (
        again.skip_message or ""
    )


def test_orphaned_runs_sensor_leaves_other_launchers_alone() -> None:
    result = orphaned_runs_sensor(dg.build_sensor_context(instance=dg.DagsterInstance.ephemeral()))
    assert isinstance(result, dg.SkipReason) and "run monitoring" in (result.skip_message or "")
