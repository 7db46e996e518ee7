"""PostgreSQL stopped (fast shutdown) mid-stream, then started again, under a running processor.

The test runs its own embedded PostgreSQL server (its own data dir and port), so stopping it
cannot hurt other tests. The outage lasts `OUTAGE_S` = 30 s (`MW_CHAOS_OUTAGE_S`), which spans
the retry backoff's 5 s cap several times over.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from mw_core.adapters import bus
from mw_core.config import Settings
from mw_core.local.pg_urls import with_database
from mw_core.local.postgres import EmbeddedPostgres
from mw_core.local.runtime import create_database
from mw_core.markets import codec
from mw_core.models import Tick
from tests.chaos.support import (
    T0,
    ProcessorProcess,
    committed_offsets,
    ensure_schema,
    fetchval,
    stored_ticks,
    wait_for,
)

pytestmark = pytest.mark.chaos

OUTAGE_S = float(os.environ.get("MW_CHAOS_OUTAGE_S", "30"))
RATE_PER_S = 300  # ticks produced per second, before, during and after the outage
SYMBOLS = ("DBAUSDT", "DBBUSDT", "DBCUSDT")


def tick_at(i: int) -> Tick:
    """The i-th tick of the feed: three symbols round-robin, 10 ticks/s/symbol of event time."""
    k, n = i % len(SYMBOLS), i // len(SYMBOLS)
    price = 100.0 * (k + 1) * (1.0004 if n % 2 else 0.9996)
    return Tick(SYMBOLS[k], T0 + n * 100, round(price, 6), source="replay")


async def produce_paced(settings: Settings, produced: list[Tick], stop: asyncio.Event) -> None:
    """Produce ticks at RATE_PER_S, like a live feed, until `stop`; append each one to `produced`."""
    await bus.ensure_topics(settings)
    producer = bus.producer(settings)
    await producer.start()
    try:
        chunk = RATE_PER_S // 10
        start = time.monotonic()
        rounds = 0
        while not stop.is_set():
            for _ in range(chunk):
                tick = tick_at(len(produced))
                key, value = codec.encode_tick(tick)
                await producer.send(settings.topic_prices, value, key=key)
                produced.append(tick)
            await producer.flush()
            rounds += 1
            await asyncio.sleep(max(0.0, start + rounds * 0.1 - time.monotonic()))
    finally:
        await producer.stop()


@pytest.mark.timeout(150 + int(OUTAGE_S))
async def test_postgres_outage_degrades_commits_nothing_and_drains_after(
    make_settings: Callable[..., Settings], tmp_path: Path, chaos_record: Callable[..., None]
) -> None:
    pg = EmbeddedPostgres(tmp_path / "pg" / "data")
    server = await asyncio.to_thread(pg.start)
    try:
        await create_database(server, "chaos")
        url = with_database(server, "chaos")
        settings = make_settings(database_url=url, prices_partitions=3)
        await ensure_schema(url)
        ticks: list[Tick] = []
        stop_feed = asyncio.Event()
        proc = ProcessorProcess(settings, tmp_path / "work").start()
        producer = asyncio.create_task(produce_paced(settings, ticks, stop_feed))
        try:

            async def flowing() -> bool:
                health = await proc.health()
                n = await fetchval(url, "SELECT count(*) FROM prices")
                return health is not None and health[0] == 200 and n > 0

            await wait_for(flowing, timeout=60, what="ticks to flow into PostgreSQL")
            before = await fetchval(url, "SELECT count(*) FROM prices")

            stopped_at = time.monotonic()
            await asyncio.to_thread(pg.stop, mode="fast")

            async def degraded() -> dict[str, object] | None:
                health = await proc.health()
                if health is not None and health[0] == 503 and health[1]["status"] == "degraded":
                    return health[1]
                return None

            state = await wait_for(degraded, timeout=15, what="/healthz to report degraded")
            detected_s = time.monotonic() - stopped_at
            await asyncio.sleep(1.0)  # a commit racing the first failed write may still land
            committed_early = await committed_offsets(settings)
            statuses = set()
            while time.monotonic() - stopped_at < OUTAGE_S:
                assert proc.alive(), "the processor died during the outage"
                health = await proc.health()
                assert health is not None, "/healthz stopped answering during the outage"
                statuses.add(health[1]["status"])
                await asyncio.sleep(0.5)
            committed_late = await committed_offsets(settings)
            assert committed_late == committed_early, "offsets were committed while PostgreSQL was down"
            assert statuses == {"degraded"}

            port = pg.port
            restarted_at = time.monotonic()
            backlog = len(ticks) - sum(c or 0 for c in committed_late.values())
            await asyncio.to_thread(pg.start)
            assert pg.port == port, "PostgreSQL came back on another port (its old one was taken)"

            async def healthy() -> bool:
                health = await proc.health()
                return health is not None and health[0] == 200

            await wait_for(healthy, timeout=30, what="/healthz to recover")
            recovered_s = time.monotonic() - restarted_at
            await asyncio.sleep(2.0)  # the feed goes on a little after the recovery
            stop_feed.set()
            await producer

            async def drained() -> bool:
                return bool(await fetchval(url, "SELECT count(*) FROM prices") == len(ticks))

            await wait_for(drained, timeout=30, what="the backlog to drain")
            drained_s = time.monotonic() - restarted_at
            committed = await committed_offsets(settings)
            metrics = await proc.metrics_text()
        finally:
            stop_feed.set()
            producer.cancel()
            rc = proc.stop()
        stored = await stored_ticks(url)
    finally:
        await asyncio.to_thread(pg.stop)

    failures = next(
        float(line.split()[-1])
        for line in metrics.splitlines()
        if line.startswith("mw_processor_db_write_failures_total ")
    )
    chaos_record(
        outage_s=OUTAGE_S,
        ticks=len(ticks),
        uncommitted_at_restart=backlog,
        stored_before_outage=before,
        degraded_detected_after_s=round(detected_s, 2),
        degraded_reason=state["degraded"],
        committed_during_outage=sum(c or 0 for c in committed_early.values()),
        healthy_after_restart_s=round(recovered_s, 2),
        drained_after_restart_s=round(drained_s, 2),
        db_write_failures=failures,
        exit_code=rc,
    )
    assert set(stored) == {(t.symbol, t.ts, t.price) for t in ticks}
    assert len(stored) == len(ticks)
    assert sum(c or 0 for c in committed.values()) == len(ticks)
    assert failures > 0
    assert rc == 0
