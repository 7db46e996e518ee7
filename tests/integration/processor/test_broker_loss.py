"""A memory-only broker that restarts while a commit is retrying: the processor reads the new log whole.

The sequence is the one the broker-restart chaos test can hit by timing, made deterministic: the
processor commits offset N on broker 1; broker 1 dies with a commit of offset N in flight (the
writer's commit of the last batch, retried inside aiokafka); broker 2 starts empty on the same
port; the member is reset (generation -1) while the commit still retries because broker 2 does
not know `prices` yet; the topic is created, the retried commit lands in the empty group, and
the group would resume at N in a log where offsets 0..N-1 are records nobody has read.
"""

from __future__ import annotations

import asyncio

import pytest
from aiokafka import TopicPartition

from mw_core.adapters import bus
from mw_core.adapters.commits import CommitMarks
from mw_core.config import Settings
from mw_core.processor.service import Processor
from tests.chaos.support import produce_ticks, wait_for
from tests.integration.conftest import kill_broker
from tests.integration.processor.test_service import fetch, walk

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


async def test_commit_marks_tell_our_log_from_another(make_settings, own_broker) -> None:  # type: ignore[no-untyped-def]
    first = own_broker("broker-1")
    settings: Settings = make_settings(kafka_bootstrap=first.bootstrap, prices_partitions=1)
    await produce_ticks(settings, walk("AAAUSDT", 20))
    tp = TopicPartition(settings.topic_prices, 0)
    reader = bus.consumer(settings, group_id=None)
    await reader.start()
    try:
        reader.assign([tp])
        records = []
        while len(records) < 20:
            records += (await reader.getmany(tp, timeout_ms=500)).get(tp, [])
    finally:
        await reader.stop()
    marks = CommitMarks()
    marks.note({tp: 20}, {tp: records[19].timestamp})
    marks.note({tp: 10}, {tp: records[9].timestamp})

    assert await marks.stale(settings, {tp: 20}) == set()  # our log
    assert await marks.stale(settings, {tp: 10}) == set()
    assert await marks.stale(settings, {tp: 15}) == set()  # not our offset: trusted
    assert await marks.stale(settings, {tp: None}) == set()

    kill_broker(first)
    own_broker("broker-2")
    await produce_ticks(settings, walk("AAAUSDT", 15, t0=2_000_000_000_000))
    assert await marks.stale(settings, {tp: 10}) == {tp}  # other records at offset 9
    assert await marks.stale(settings, {tp: 20}) == {tp}  # past the end of the new log


class CommitAfterReset(Processor):
    """Once armed, the writer's commit waits until the member has been reset (generation -1).

    That is the order in which the heartbeat and a commit stuck in the outage meet the new broker
    when the heartbeat wins; the subclass only pins it, the commit itself is the real one.
    """

    armed = False

    async def _commit(self, offsets: dict[TopicPartition, int]) -> None:
        if self.armed:
            self.armed = False
            assert self._consumer is not None
            while self._consumer._coordinator.generation != -1:
                await asyncio.sleep(0.01)
        await super()._commit(offsets)


async def test_commit_retried_into_a_restarted_broker_does_not_skip_its_records(
    make_settings, own_broker, caplog: pytest.LogCaptureFixture
) -> None:  # type: ignore[no-untyped-def]
    first = own_broker("broker-1")
    settings: Settings = make_settings(kafka_bootstrap=first.bootstrap, prices_partitions=1)
    before = walk("AAAUSDT", 210)
    await produce_ticks(settings, before[:200])
    proc = CommitAfterReset(settings)
    await proc.start()
    running = asyncio.ensure_future(proc.run())
    try:

        async def stored(n: int) -> bool:
            return proc.stats.stored == n and proc.stats.last_commit_at is not None

        await wait_for(lambda: stored(200), timeout=30, what="the first 200 ticks durable and committed")
        proc.armed = True
        await produce_ticks(settings, before[200:])

        async def in_db(n: int) -> bool:
            rows = await fetch(settings, "SELECT count(*) AS n FROM prices")
            return rows[0]["n"] == n

        await wait_for(lambda: in_db(210), timeout=30, what="the last batch durable, its commit held")
        kill_broker(first)
        own_broker("broker-2")  # empty: no topics, no groups
        await asyncio.sleep(2.0)  # the member is reset; the commit retries: `prices` is unknown
        after = walk("AAAUSDT", 300, t0=before[-1].ts + 60_000)
        await produce_ticks(settings, after)  # creates `prices`: the retried commit lands (offset 210)

        await wait_for(lambda: in_db(len(before) + len(after)), timeout=60, what="the new log stored")
        assert "no longer holds the record before its committed offset 210" in caplog.text
    finally:
        proc.stop()
        await asyncio.wait_for(running, 30)
