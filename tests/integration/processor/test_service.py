"""Processor on real components: embedded broker + PostgreSQL, real consumer groups."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

import asyncpg
import orjson
import pytest
from aiokafka import TopicPartition

from mw_core.adapters import bus
from mw_core.adapters.postgres.pool import create_pool
from mw_core.adapters.postgres.schema import SCHEMA_VERSION, TABLES, apply_schema, table_counts
from mw_core.config import Settings
from mw_core.models import Tick
from mw_core.processor.intake import Batch, fetch_batch
from mw_core.processor.service import Processor
from tests.chaos.support import produce_ticks

pytestmark = pytest.mark.integration

T0 = 1_722_816_000_000  # 2024-08-05 00:00 UTC


def walk(
    symbol: str,
    n: int,
    *,
    start: float = 100.0,
    step_ms: int = 1000,
    t0: int = T0,
    jump_at: int | None = None,
    jump: float = 0.0,
) -> list[Tick]:
    """A deterministic gentle zig-zag with an optional jump (fraction) at index `jump_at`."""
    out, price = [], start
    for i in range(n):
        price *= 1.0005 if i % 2 else 0.9995
        if jump_at is not None and i == jump_at:
            price *= 1 + jump
        out.append(Tick(symbol, t0 + i * step_ms, round(price, 6), source="replay"))
    return out


async def produce(
    settings: Settings, ticks: Iterable[Tick], raw: Iterable[tuple[bytes | None, bytes]] = ()
) -> None:
    """Ticks (codec format), then raw (key, value) records, to `prices` (the chaos suite's producer)."""
    await produce_ticks(settings, ticks, raw)


async def consume_all(settings: Settings, topic: str, *, expect: int, timeout: float = 10.0) -> list[dict]:
    # No consumer group: assign all partitions directly (no group-join delay).
    consumer = bus.consumer(settings, group_id=None)
    await consumer.start()
    consumer.assign([TopicPartition(topic, 0)])  # alerts / dlq have one partition
    out: list[dict] = []
    try:
        deadline = asyncio.get_running_loop().time() + timeout
        while asyncio.get_running_loop().time() < deadline:
            batch = await consumer.getmany(timeout_ms=300)
            for records in batch.values():
                out.extend(orjson.loads(r.value) for r in records)
            if len(out) >= expect and not batch:
                break
    finally:
        await consumer.stop()
    return out


async def fetch(settings: Settings, sql: str, *args: object) -> list[asyncpg.Record]:
    assert settings.database_url is not None
    conn = await asyncpg.connect(settings.database_url.get_secret_value())
    try:
        return await conn.fetch(sql, *args)
    finally:
        await conn.close()


async def test_ticks_flow_to_db_and_jump_raises_one_alert(settings: Settings) -> None:
    ticks = walk("AAAUSDT", 300, jump_at=200, jump=0.05) + walk("BBBUSDT", 300)
    await produce(settings, ticks)

    stats = await Processor(settings).run(idle_exit_s=2.0)

    assert stats.stored == 600
    rows = await fetch(settings, "SELECT symbol, count(*) AS n FROM prices GROUP BY symbol ORDER BY symbol")
    assert [(r["symbol"], r["n"]) for r in rows] == [("AAAUSDT", 300), ("BBBUSDT", 300)]
    anomalies = await fetch(
        settings, "SELECT symbol, ts, window_s, direction, ret, published_at FROM anomalies ORDER BY ts"
    )
    # The jump is seen at once by the 60 s window; the 300 s window keeps seeing it, so the symbol
    # re-alerts once per cooldown (60 s of event time) while the move stays in a window.
    assert [(a["symbol"], a["window_s"], a["direction"]) for a in anomalies] == [
        ("AAAUSDT", 60, "up"),
        ("AAAUSDT", 300, "up"),
    ]
    assert (anomalies[1]["ts"] - anomalies[0]["ts"]).total_seconds() == 60
    assert all(a["ret"] >= 0.02 for a in anomalies)
    # Both detections are one episode: the first opens it, the weaker second updates it silently.
    events = await fetch(settings, "SELECT episode_id, kind, seq, published_at FROM alert_events")
    assert [(e["kind"], e["seq"]) for e in events] == [("open", 1)]
    assert events[0]["published_at"] is not None
    alerts = await consume_all(settings, settings.topic_alerts, expect=1)
    assert [(a["symbol"], a["kind"], a["seq"], a["window_s"]) for a in alerts] == [("AAAUSDT", "open", 1, 60)]
    assert alerts[0]["episode_id"] == events[0]["episode_id"]
    assert alerts[0]["summary"].startswith("AAAUSDT up +")
    episodes = await fetch(settings, "SELECT symbol, last_seq, closed_at FROM alert_episodes")
    assert [(e["symbol"], e["last_seq"], e["closed_at"]) for e in episodes] == [("AAAUSDT", 1, None)]
    metrics = await fetch(settings, "SELECT DISTINCT window_s FROM metrics ORDER BY 1")
    assert [r["window_s"] for r in metrics] == [60, 300, 900]


async def test_offsets_committed_only_after_durable_write(settings: Settings) -> None:
    ticks = walk("CCCUSDT", 50)
    await produce(settings, ticks)
    await Processor(settings).run(idle_exit_s=1.5)

    consumer = bus.consumer(settings, group_id=settings.consumer_group)
    await consumer.start()
    try:
        parts = consumer.partitions_for_topic(settings.topic_prices) or set()
        committed = [await consumer.committed(TopicPartition(settings.topic_prices, p)) for p in parts]
    finally:
        await consumer.stop()
    assert sum(c or 0 for c in committed) == 50


async def test_bad_records_go_to_dlq_with_reasons_and_processing_continues(settings: Settings) -> None:
    good = walk("DDDUSDT", 40)
    bad = [
        (b"DDDUSDT", b"{not json"),
        (b"DDDUSDT", orjson.dumps({"symbol": "DDDUSDT", "ts": T0})),  # no price
        (b"DDDUSDT", orjson.dumps({"symbol": "DDDUSDT", "price": -5, "ts": T0 + 99_000})),
        (b"DDDUSDT", orjson.dumps({"symbol": "DDDUSDT", "price": 1e30, "ts": T0 + 99_000})),
        (b"DDDUSDT", b'{"symbol": "DDDUSDT", "price": NaN, "ts": 1722816099000}'),
        (b"DDDUSDT", orjson.dumps({"symbol": "DDDUSDT", "price": 1.0, "ts": 1000})),  # 1970
        (b"bad sym", orjson.dumps({"symbol": "bad sym", "price": 1.0, "ts": T0})),
        (b"DDDUSDT", orjson.dumps([1, 2, 3])),
    ]
    await produce(settings, good, bad)

    stats = await Processor(settings).run(idle_exit_s=1.5)

    assert stats.stored == 40
    assert stats.dead_letters == len(bad)
    dlq = await consume_all(settings, settings.topic_dlq, expect=len(bad))
    reasons = sorted(d["reason"] for d in dlq)
    assert reasons == sorted(
        [
            "malformed_json",
            "missing_field",
            "bad_price",
            "bad_price",
            "malformed_json",
            "bad_ts",
            "bad_symbol",
            "not_an_object",
        ]
    )
    n = await fetch(settings, "SELECT count(*) AS n FROM prices WHERE price <= 0 OR price > 1e9")
    assert n[0]["n"] == 0


async def test_out_of_order_beyond_tolerance_is_dead_lettered(settings: Settings) -> None:
    ticks = walk("EEEUSDT", 20)
    late_ok = Tick("EEEUSDT", ticks[-1].ts - 2_000 + 1, 100.0, source="replay")  # within 5 s
    late_bad = Tick("EEEUSDT", ticks[-1].ts - 60_000 + 1, 100.0, source="replay")
    await produce(settings, [*ticks, late_ok, late_bad])

    stats = await Processor(settings).run(idle_exit_s=1.5)

    assert stats.stored == 21 and stats.dead_letters == 1
    dlq = await consume_all(settings, settings.topic_dlq, expect=1)
    assert dlq[0]["reason"] == "out_of_order"


class CrashBeforeCommit(Processor):
    """Dies right after the batch is durable in PostgreSQL, before offsets are committed."""

    class Crash(Exception):
        pass

    async def _commit(self, offsets: dict[TopicPartition, int]) -> None:
        raise self.Crash


async def test_crash_between_write_and_commit_loses_and_duplicates_nothing(settings: Settings) -> None:
    ticks = walk("FFFUSDT", 400, jump_at=350, jump=-0.06)
    await produce(settings, ticks)

    crashing = CrashBeforeCommit(settings.model_copy(update={"batch_max_records": 100}))
    with pytest.raises(CrashBeforeCommit.Crash):
        await crashing.run(idle_exit_s=1.5)
    first = await fetch(settings, "SELECT count(*) AS n FROM prices")
    assert 0 < first[0]["n"] <= 100

    await Processor(settings).run(idle_exit_s=1.5)

    rows = await fetch(settings, "SELECT count(*) AS n, count(DISTINCT ts) AS d FROM prices")
    assert rows[0]["n"] == rows[0]["d"] == 400
    anomalies = await fetch(settings, "SELECT symbol, ts, window_s FROM anomalies")
    assert len(anomalies) == 1
    alerts = await consume_all(settings, settings.topic_alerts, expect=1)
    assert len(alerts) == 1


async def test_restart_rehydrates_windows_from_db(make_settings) -> None:  # type: ignore[no-untyped-def]
    settings: Settings = make_settings()
    # +1.9 % per minute twice: 3.8 % over 2 minutes. A cold processor sees only the 2 new ticks
    # (1.9 %, below every threshold); only windows rehydrated from the DB see the 300 s move.
    ticks = walk("GGGUSDT", 240, step_ms=1000)
    price = ticks[-1].price
    later = []
    for i in range(1, 3):
        price *= 1.019
        later.append(Tick("GGGUSDT", ticks[-1].ts + i * 60_000, price, source="replay"))
    await produce(settings, ticks)
    await Processor(settings).run(idle_exit_s=1.5)
    assert not await fetch(settings, "SELECT 1 FROM anomalies")

    await produce(settings, later)
    await Processor(settings).run(idle_exit_s=1.5)

    anomalies = await fetch(settings, "SELECT window_s, direction FROM anomalies")
    assert [(a["window_s"], a["direction"]) for a in anomalies] == [(300, "up")]


async def test_two_processors_split_partitions(make_settings) -> None:  # type: ignore[no-untyped-def]
    settings: Settings = make_settings(prices_partitions=6)
    symbols = [f"S{i}XUSDT" for i in range(12)]
    ticks = [t for s in symbols for t in walk(s, 100)]
    await bus.ensure_topics(settings)

    a, b = Processor(settings), Processor(settings)
    await a.start()
    await b.start()
    await produce(settings, ticks)
    stats_a, stats_b = await asyncio.gather(a.run(idle_exit_s=4.0), b.run(idle_exit_s=4.0))

    assert stats_a.stored + stats_b.stored >= 1200
    assert stats_a.stored > 0 and stats_b.stored > 0
    rows = await fetch(settings, "SELECT count(*) AS n FROM prices")
    assert rows[0]["n"] == 1200


async def test_schema_is_idempotent_and_versioned(settings: Settings) -> None:
    assert settings.database_url is not None
    pool = await create_pool(settings.database_url.get_secret_value())
    try:
        first = await apply_schema(pool)
        again, other = await asyncio.gather(apply_schema(pool), apply_schema(pool))
        assert first.applied == tuple(range(1, SCHEMA_VERSION + 1))
        assert again.applied == () and other.applied == ()
        assert first.timescale is False  # no timescaledb extension here
        versions = await pool.fetch("SELECT version FROM schema_version")
        assert sorted(r["version"] for r in versions) == list(range(1, SCHEMA_VERSION + 1))
        counts = await table_counts(pool)
        assert set(counts) == set(TABLES)
    finally:
        await pool.close()


async def test_batch_fetched_before_a_rebalance_is_stored_but_its_offsets_not_committed(
    settings: Settings,
) -> None:
    """A batch in hand when the partitions are revoked is written, but its offsets are not committed.

    They belong to the previous assignment (after a restart of the memory-only broker, to the
    previous broker): committed into the new generation they would move the group past records
    nobody read. The partitions' owner re-reads from the committed offset instead.
    """
    ticks = walk("HHHUSDT", 120) + walk("IIIUSDT", 120)
    await produce(settings, ticks)
    proc = Processor(settings)
    await proc.start()
    other = bus.consumer(settings, settings.topic_prices, group_id=settings.consumer_group)
    try:
        assert proc._consumer is not None
        batch: Batch = {}
        epoch = proc._epoch
        while sum(len(r) for r in batch.values()) < len(ticks):
            more = await fetch_batch(proc._consumer, max_records=10_000, timeout_ms=500)
            for tp, records in more.items():
                batch.setdefault(tp, []).extend(records)
        # A second member joins: a real rebalance revokes the processor's partitions.
        await other.start()
        joined = asyncio.ensure_future(other.getmany(timeout_ms=15_000))
        deadline = asyncio.get_running_loop().time() + 30
        while proc._epoch == epoch or not other.assignment():
            assert asyncio.get_running_loop().time() < deadline, "no rebalance within 30 s"
            await proc._consumer.getmany(timeout_ms=100)  # the member's part of the rebalance
        # Finished while part of its partitions belong to the other member: no error (the lag
        # gauge skips partitions no longer assigned), no commit.
        stale = await proc.prepare_batch(batch, epoch=epoch)
        await proc.finish_batch(stale)
        # ... and leaves again: every partition comes back to the processor in a new generation,
        # where the broker WOULD accept the stale offsets.
        joined.cancel()
        await other.stop()
        everything = {TopicPartition(settings.topic_prices, p) for p in range(settings.prices_partitions)}
        while proc._consumer.assignment() != everything:
            assert asyncio.get_running_loop().time() < deadline, "partitions not back within 30 s"
            await proc._consumer.getmany(timeout_ms=100)
        await proc.finish_batch(stale)  # again (a replay, written idempotently)

        rows = await fetch(settings, "SELECT count(*) AS n FROM prices")
        assert rows[0]["n"] == len(ticks)  # written (idempotently) all the same
        reader = bus.consumer(settings, group_id=settings.consumer_group)  # never joins the group
        await reader.start()
        try:
            committed = [
                await reader.committed(TopicPartition(settings.topic_prices, p))
                for p in range(settings.prices_partitions)
            ]
        finally:
            await reader.stop()
        assert committed == [None] * settings.prices_partitions
    finally:
        await other.stop()
        await proc.close()
