"""Chaos: SIGKILL a real ``dagster-daemon run`` (and everything it spawned) mid-way, then restart it.

The daemon runs on the repository's dagster.yaml (PostgreSQL run/event/schedule storage in a fresh
database, QueuedRunCoordinator) with the code location of ``workspace.yaml``. The sensors tick
every 5 s (``MW_*_INTERVAL_S``): `rss_poll_sensor` polls
a local feed server (`tests.fakes.feeds`), `new_anomalies_sensor` walks the alerts (published open
episode events) inserted into the test database. As soon as both sensors have requested runs, the
daemon's whole process group -- code server and in-flight run workers included -- gets SIGKILL.
More news and alerts arrive while it is down; then the daemon is started again on the same
DAGSTER_HOME.

Asserted, from the database and from a `DagsterInstance` on the same DAGSTER_HOME:
- the sensor cursors resume: after the restart they are never behind what they were at the kill;
- every headline is stored once and every alert enriched once (per model);
- no run key was launched twice (sensor ticks resumed after the kill do not duplicate runs);
- liveness: what arrived while the daemon was down is stored and enriched after the restart, and
  runs whose worker was killed mid-flight do not stay ``STARTED`` (holding the one-slot ``llm``
  pool): `orphaned_runs_sensor` fails them and frees their slots.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import asyncpg
import dagster as dg
import pytest
from dagster._core.scheduler.instigation import InstigatorType

from mw_core.adapters.postgres.episodes import insert_events, mark_events_published, unpublished_events
from mw_core.batch import partition as batch
from mw_core.markets.episodes import EpisodeEvent, episode_id
from sensors.anomalies import parse_cursor
from tests.dagster.helpers import (
    BIN,
    ROOT,
    dagster_env,
    fresh_database,
    make_dagster_home,
    rss,
    stop_group,
)
from tests.factories import opening_event
from tests.fakes.feeds import Feed, FeedServer

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(150)]

RUN_KEY = "dagster/run_key"
FINISHED = {dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED}
T0 = 1_722_820_259_999  # 2024-08-05 01:10:59.999 UTC (the crash of the crash day)
FIRST_NEWS = [(f"c{i}", f"Bitcoin chaos headline {i}") for i in range(1, 5)]
LATER_NEWS = [(f"d{i}", f"Ether headline while the daemon was down {i}") for i in range(1, 4)]


class Daemon:
    """``dagster-daemon run`` in its own session: SIGKILL of the group takes its children along."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.env = env
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [str(BIN / "dagster-daemon"), "run", "-w", "workspace.yaml"],
                cwd=ROOT,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL the whole process group (daemon, code server, run workers) and reap the daemon."""
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None:
            stop_group(self.proc, grace_s=10)

    def tail(self, chars: int = 6000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""


def _wait(
    what: str,
    predicate: Callable[[], bool],
    *,
    timeout: float,
    daemon: Daemon,
    instance: dg.DagsterInstance,
) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        problem = "daemon exited" if not daemon.alive() else None
        if problem is None and time.monotonic() > deadline:
            problem = f"timed out after {timeout:.0f} s"
        if problem:
            runs = "\n".join(
                f"  {r.run_id} {r.job_name} {r.status.value} {r.tags.get(RUN_KEY)}" for r in _runs(instance)
            )
            pytest.fail(f"{problem} waiting for {what}; runs:\n{runs}\n{daemon.tail()}")
        time.sleep(0.5)


def _cursors(instance: dg.DagsterInstance) -> dict[str, str | None]:
    states = instance.all_instigator_state(instigator_type=InstigatorType.SENSOR)
    return {
        s.instigator_name: getattr(s.instigator_data, "cursor", None) if s.instigator_data else None
        for s in states
    }


def _runs(instance: dg.DagsterInstance) -> list[dg.DagsterRun]:
    return [r.dagster_run for r in instance.get_run_records()]


def _seen(cursor: str | None, feed: str) -> set[str]:
    data = json.loads(cursor) if cursor else {}
    return set(data.get("feeds", {}).get(feed, {}).get("seen", []))


async def _fetch(url: str, sql: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(url)
    try:
        return list(await conn.fetch(sql))
    finally:
        await conn.close()


def _alert(ts: int) -> EpisodeEvent:
    """An episode opening at `ts`: one alert."""
    summary = "BTCUSDT down -3.00% over 1 min; episode opened."
    return opening_event(
        "BTCUSDT", ts, 60, -0.03, price=56000.0, threshold=0.02, ref_price=57700.0, summary=summary
    )


async def _publish_alerts(pool: asyncpg.Pool, first: int, n: int) -> None:
    """`n` alerts stored and published like the processor does (the sensor sees published ones)."""
    async with pool.acquire() as conn, conn.transaction():
        await insert_events(conn, [_alert(T0 + (first + i) * 60_000) for i in range(n)])
    await mark_events_published(pool, [i for i, _ in await unpublished_events(pool)])


@pytest.fixture
def dagster_db(pg_server_url: str) -> Iterator[str]:
    """A fresh database for Dagster's own storage; yields its (asyncpg-style) URL."""
    with fresh_database(pg_server_url) as url:
        yield url


def test_daemon_sigkill_mid_way_resumes_without_duplicates(
    db_url: str,
    dagster_db: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    chaos_record: Callable[..., None],
) -> None:
    started = time.monotonic()
    batch.run_with_pool(db_url, batch.apply_schema)
    batch.run_with_pool(db_url, lambda pool: _publish_alerts(pool, 0, 3))

    home = make_dagster_home(tmp_path / "dagster_home")
    with FeedServer() as server:
        feed = server.add("/chaos.xml", Feed(rss(*FIRST_NEWS)))
        env = dagster_env(
            home,
            dagster_db,
            MW_DATABASE_URL=db_url,
            MW_RSS_FEEDS=feed,
            MW_RSS_POLL_INTERVAL_S="5",
            MW_ANOMALIES_POLL_INTERVAL_S="5",
            MW_ORPHANED_RUNS_INTERVAL_S="5",
            MW_LLM_PROVIDER="template",
        )
        monkeypatch.setenv("DAGSTER_PG_URL", env["DAGSTER_PG_URL"])
        instance = dg.DagsterInstance.from_config(str(home))
        daemon = Daemon(env, tmp_path / "daemon.log")
        try:
            # --- phase 1: sensors tick and request runs; kill the group while they are in flight.
            daemon.start()

            # Kill while a run worker is executing (STARTED). Wait until no run is QUEUED or
            # STARTING: the feed and the alerts do not change before the kill, so the sensors
            # request nothing new, and no run can be caught between launch and RUN_START (such a
            # run is failed by run monitoring only after start_timeout_seconds, 180 s).
            def in_flight() -> bool:
                runs = _runs(instance)
                jobs = {r.job_name for r in runs if r.tags.get(RUN_KEY)}
                statuses = {r.status for r in runs}
                return (
                    {"headlines_job", "alert_enrichments_job"} <= jobs
                    and dg.DagsterRunStatus.STARTED in statuses
                    and statuses <= {dg.DagsterRunStatus.STARTED, *FINISHED}
                )

            _wait("a run worker in flight", in_flight, timeout=40, daemon=daemon, instance=instance)
            daemon.kill()
            killed_at = time.monotonic()
            before = _cursors(instance)
            # The kill may land between a tick's run creation and its cursor update: a cursor
            # may still be unset here; the resumed tick must not launch those runs again.
            runs_before = {r.run_id: r.status for r in _runs(instance)}

            # --- while the daemon is down: more news, more alerts.
            server.set_body("/chaos.xml", rss(*LATER_NEWS, *FIRST_NEWS))
            batch.run_with_pool(db_url, lambda pool: _publish_alerts(pool, 10, 2))

            # --- phase 2: restart on the same DAGSTER_HOME; everything arrives exactly once.
            daemon.start()
            titles = {t for _, t in FIRST_NEWS + LATER_NEWS}

            def all_done() -> bool:
                stored = asyncio.run(_fetch(db_url, "SELECT title FROM headlines"))
                enriched = asyncio.run(_fetch(db_url, "SELECT episode_id FROM alert_enrichments"))
                return {r["title"] for r in stored} >= titles and len(enriched) >= 5

            _wait("news and alerts after the restart", all_done, timeout=45, daemon=daemon, instance=instance)
            # Runs whose worker died with the daemon are failed by orphaned_runs_sensor (without
            # it they would stay STARTED for max_runtime_seconds, holding the `llm` pool slot).
            orphans = {i for i, status in runs_before.items() if status == dg.DagsterRunStatus.STARTED}

            def orphans_failed() -> bool:
                return all(
                    (run := instance.get_run_by_id(i)) is not None
                    and run.status == dg.DagsterRunStatus.FAILURE
                    for i in orphans
                )

            _wait("orphaned runs to be failed", orphans_failed, timeout=15, daemon=daemon, instance=instance)
            # One more sensor tick so the cursors reflect the finished runs.
            _wait(
                "the alert cursor to cover every row",
                lambda: _cursors(instance).get("new_anomalies_sensor") == "events:5",
                timeout=15,
                daemon=daemon,
                instance=instance,
            )
            after = _cursors(instance)
            runs = _runs(instance)
        finally:
            daemon.stop()
            instance.dispose()

    # Cursors resume: never behind what was stored at the kill.
    assert parse_cursor(after["new_anomalies_sensor"]) >= parse_cursor(before["new_anomalies_sensor"])
    assert after["new_anomalies_sensor"] == "events:5"
    assert _seen(after["rss_poll_sensor"], feed) >= _seen(before["rss_poll_sensor"], feed)

    # Nothing twice: headlines (PK on id; also by title), enrichments per (alert, model), run keys.
    headlines = asyncio.run(_fetch(db_url, "SELECT id, title FROM headlines"))
    assert Counter(r["title"] for r in headlines) == Counter(titles)
    enrichments = asyncio.run(_fetch(db_url, "SELECT episode_id, seq, model FROM alert_enrichments"))
    expected = sorted(episode_id("BTCUSDT", T0 + m * 60_000) for m in (0, 1, 2, 10, 11))
    assert sorted(r["episode_id"] for r in enrichments) == expected
    keys = Counter(r.tags[RUN_KEY] for r in runs if RUN_KEY in r.tags)
    assert keys and max(keys.values()) == 1, keys
    # Runs that existed at the kill were not launched again under new ids for the same key.
    assert set(runs_before) <= {r.run_id for r in runs}
    chaos_record(
        kill_after_s=round(killed_at - started, 1),
        total_s=round(time.monotonic() - started, 1),
        alert_cursor=f"{before['new_anomalies_sensor']} -> {after['new_anomalies_sensor']}",
        seen_headlines=f"{len(_seen(before['rss_poll_sensor'], feed))} -> {len(_seen(after['rss_poll_sensor'], feed))}",
        runs_at_kill=dict(Counter(s.value for s in runs_before.values())),
        orphaned_runs_failed=len(orphans),
        runs_final=dict(Counter(r.status.value for r in runs)),
    )
