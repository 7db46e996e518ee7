"""SIGKILL the processor at random points of a 200,000-tick stream; restart it each time.

The issue's figures: 200,000 ticks, `KILLS` = 20 kills (`MW_CHAOS_KILLS`; each kill costs ~11 s
of Tansu group rejoin: the dead member's 6 s session must expire before its partitions move).
Batches are 2,000 records (default 50,000) so that the 200,000 ticks make ~100 batches and the
kills land in many different batches and pipeline phases.

The `alerts` topic carries episode events (open / escalate / close), identified by
``(episode_id, seq)``; the outbox is `alert_events.published_at`. The episode quiet period is
`QUIET_S` = 300 s here (default 3600 s): with the default, this market's jumps (about one per
symbol every 300 s) keep one episode per symbol open for the whole run and nothing ever closes;
300 s gives ~170 events of all three kinds, so kills land amid opens, escalations and closes,
and every restart must rebuild open episodes from the stored detections.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path

import asyncpg
import orjson
import pytest

from mw_core.config import Settings
from mw_core.markets.codec import encode_event
from mw_core.models import Tick
from tests.chaos.support import (
    T0,
    ProcessorProcess,
    anomaly_keys,
    clean_twin,
    committed_offsets,
    ensure_schema,
    event_body,
    event_key,
    produce_ticks,
    pure_events,
    read_topic,
    settled,
    stored_events,
    stored_ticks,
    wait_for,
    with_schema,
)

pytestmark = pytest.mark.chaos

N_SYMBOLS = 20
N_PER_SYMBOL = 10_000  # 200,000 ticks
SEED = int(os.environ.get("MW_CHAOS_SEED", "20241124"))
KILLS = int(os.environ.get("MW_CHAOS_KILLS", "20"))
KILL_JITTER_S = 0.15
QUIET_S = 300


def market(seed: int, symbols: int, n: int) -> list[Tick]:
    """A seeded random walk per symbol (1 tick/s) with +-4 % jumps about every 300 ticks."""
    rng = random.Random(seed)
    names = [f"K{i:02d}USDT" for i in range(symbols)]
    price = dict.fromkeys(names, 100.0)
    out = []
    for i in range(n):
        for s in names:
            step = rng.gauss(0, 0.0005)
            if rng.random() < 1 / 300:
                step += rng.choice((-0.04, 0.04))
            price[s] *= 1 + step
            out.append(Tick(s, T0 + i * 1000, round(price[s], 6), source="replay"))
    return out


async def _count(conn: asyncpg.Connection) -> int:
    return int(await conn.fetchval("SELECT count(*) FROM prices"))


@pytest.mark.timeout(120 + 15 * KILLS)
async def test_sigkill_at_random_points_loses_and_duplicates_nothing(
    make_settings: Callable[..., Settings],
    tmp_path: Path,
    make_db: Callable[[], Awaitable[str]],
    chaos_record: Callable[..., None],
) -> None:
    rng = random.Random(SEED)
    settings, url = await with_schema(
        make_settings, prices_partitions=6, batch_max_records=2_000, episode_quiet_s=QUIET_S
    )
    clean_url = await make_db()
    clean = clean_twin(
        make_settings,
        settings,
        clean_url,
        prices_partitions=6,
        batch_max_records=2_000,
        episode_quiet_s=QUIET_S,
    )
    await ensure_schema(clean_url)
    ticks = market(SEED, N_SYMBOLS, N_PER_SYMBOL)
    total = len(ticks)
    started = time.monotonic()
    await produce_ticks(settings, ticks)
    produced_s = time.monotonic() - started

    # The reference: one processor, never disturbed, same data, its own DB / group / alert topic.
    reference = ProcessorProcess(clean, tmp_path / "clean", name="clean").start()

    targets = sorted(rng.sample(range(total // 20, total - total // 20), KILLS))
    kills: list[dict[str, int | float]] = []
    exposed: set[tuple[str, int]] = set()  # events in Kafka whose published_at is NULL
    incarnation = 0
    proc = ProcessorProcess(settings, tmp_path / "chaos", name=f"chaos-{incarnation}").start()
    conn = await asyncpg.connect(url)
    try:
        for target in targets:
            spawned_at, at_spawn = time.monotonic(), await _count(conn)
            # Every incarnation makes some durable progress (unless everything is stored already).
            goal = min(max(target, at_spawn + 1), total)

            async def reached(goal: int = goal) -> bool:
                return await _count(conn) >= goal

            await wait_for(reached, timeout=90, interval=0.01, what=f"{goal} stored ticks")
            resumed_s = time.monotonic() - spawned_at
            await asyncio.sleep(rng.uniform(0, KILL_JITTER_S))
            proc.kill(signal.SIGKILL)
            at_kill = await _count(conn)
            incarnation += 1
            proc = ProcessorProcess(settings, tmp_path / "chaos", name=f"chaos-{incarnation}").start()
            # Safe to measure now: the dead member keeps its partitions until its session expires.
            committed = await committed_offsets(settings)
            unpublished = {
                (r["episode_id"], int(r["seq"]))
                for r in await conn.fetch(
                    "SELECT episode_id, seq FROM alert_events WHERE published_at IS NULL"
                )
            }
            sent = {event_key(a) for a in await read_topic(settings, settings.topic_alerts)}
            # New keys only: an orphan stays unmarked until a later incarnation reaches its partition.
            newly_exposed = (unpublished & sent) - exposed
            exposed |= unpublished & sent
            kills.append(
                {
                    "target": target,
                    "stored_at_kill": at_kill,
                    "uncommitted_stored": at_kill - sum(c or 0 for c in committed.values()),
                    "alerts_sent_not_marked": len(newly_exposed),
                    "s_to_progress_after_restart": round(resumed_s, 1),
                }
            )
        await wait_for(lambda: settled(url, total), timeout=90, interval=0.2, what="chaos run to finish")
        await wait_for(lambda: settled(clean_url, total), timeout=60, interval=0.2, what="clean run")
    finally:
        await conn.close()
        rc_chaos, rc_clean = proc.stop(), reference.stop()
    elapsed = time.monotonic() - started

    # 1. prices holds exactly the produced ticks: no gap, no duplicate.
    stored = await stored_ticks(url)
    assert len(stored) == total
    assert set(stored) == {(t.symbol, t.ts, t.price) for t in ticks}
    committed = await committed_offsets(settings)
    assert sum(c or 0 for c in committed.values()) == total

    # 2. anomalies equal those of the undisturbed run.
    chaos_anomalies, clean_anomalies = await anomaly_keys(url), await anomaly_keys(clean_url)
    assert len(clean_anomalies) > 100
    assert set(chaos_anomalies) == set(clean_anomalies)

    # 3. episode events equal the undisturbed run's, field for field (so every restart rebuilt the
    # open episodes exactly), and each one is on the topic exactly once.
    chaos_events, clean_events = await stored_events(url), await stored_events(clean_url)
    kinds = Counter(e["kind"] for e in clean_events)
    assert len(clean_events) > 100 and kinds["open"] and kinds["escalate"] and kinds["close"], kinds
    assert {event_body(e) for e in chaos_events} == {event_body(e) for e in clean_events}
    published = await read_topic(settings, settings.topic_alerts)
    alerts = Counter(event_key(a) for a in published)
    duplicates = {k: n for k, n in alerts.items() if n > 1}
    chaos_record(
        ticks=total,
        kills=len(kills),
        seed=SEED,
        produce_s=round(produced_s, 1),
        elapsed_s=round(elapsed, 1),
        anomalies=len(chaos_anomalies),
        episode_events=len(chaos_events),
        events_by_kind=dict(sorted(kinds.items())),
        alerts_published=sum(alerts.values()),
        duplicate_alerts=sum(n - 1 for n in duplicates.values()),
        kills_in_outbox_window=sum(1 for k in kills if k["alerts_sent_not_marked"]),
        alerts_exposed_in_outbox_window=len(exposed),
        replayed_ticks=sum(int(k["uncommitted_stored"]) for k in kills),
        exit_codes=(rc_chaos, rc_clean),
        per_kill=kills,
    )
    assert not duplicates, f"{len(duplicates)} events published more than once: {sorted(duplicates)[:5]}"
    assert {event_body(a) for a in published} == {event_body(e) for e in chaos_events}
    clean_published = await read_topic(clean, clean.topic_alerts)
    assert sorted(map(event_body, clean_published)) == sorted(map(event_body, clean_events))
    assert (await read_topic(settings, settings.topic_dlq)) == []
    assert rc_chaos == 0 and rc_clean == 0


# Holds every `published_at` update of the outbox inside PostgreSQL: the processor has sent the
# episode events and waits for the mark, so a SIGKILL now lands exactly in the outbox window (sent,
# not marked). The statement is `mark_events_published`'s (mw_core/adapters/postgres/episodes.py).
_HOLD_MARK = [
    """
    CREATE FUNCTION chaos_hold_publish() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN PERFORM pg_sleep(120); RETURN NEW; END $$
    """,
    """
    CREATE TRIGGER chaos_hold BEFORE UPDATE OF published_at ON alert_events
        FOR EACH ROW EXECUTE FUNCTION chaos_hold_publish()
    """,
]
_HELD = """
SELECT pid FROM pg_stat_activity
WHERE state = 'active' AND query LIKE 'UPDATE alert_events SET published_at%'
"""


@pytest.mark.timeout(120)
async def test_sigkill_between_alert_send_and_mark_publishes_each_alert_once(
    make_settings: Callable[..., Settings], tmp_path: Path, chaos_record: Callable[..., None]
) -> None:
    # A 120 s quiet period, so that each symbol's episode also closes within its 1,400 ticks.
    settings, url = await with_schema(make_settings, prices_partitions=3, episode_quiet_s=120)
    conn = await asyncpg.connect(url)
    try:
        for sql in _HOLD_MARK:
            await conn.execute(sql)
        # Per symbol +5 % (open), +9 % two minutes later (escalate), then calm (close): 3 events.
        ticks = [
            t for s in ("OWAUSDT", "OWBUSDT", "OWCUSDT") for t in _walk(s, 1_400, {200: 0.05, 320: 0.09})
        ]
        expected = pure_events(settings, ticks)
        assert [e.kind for e in expected].count("close") == 3 and len(expected) == 9
        await produce_ticks(settings, ticks)
        first = ProcessorProcess(settings, tmp_path, name="first").start()
        held = await wait_for(lambda: conn.fetch(_HELD), timeout=60, what="the held published_at update")
        sent = await read_topic(settings, settings.topic_alerts)
        assert sent, "the episode events must be in Kafka before the kill"
        first.kill(signal.SIGKILL)
        for row in held:  # the dead client's statement: cancel it, so its update rolls back
            await conn.execute("SELECT pg_cancel_backend($1)", row["pid"])
        await conn.execute("DROP TRIGGER chaos_hold ON alert_events")
        await wait_for(lambda: _no_held(conn), timeout=10, what="the held update to roll back")
        unmarked = await conn.fetchval("SELECT count(*) FROM alert_events WHERE published_at IS NULL")
        assert unmarked >= len(sent)

        second = ProcessorProcess(settings, tmp_path, name="second").start()
        await wait_for(lambda: settled(url, len(ticks)), timeout=60, what="the restart to publish")
        metrics = await second.metrics_text()
        assert second.stop() == 0
    finally:
        await conn.close()
    published = await read_topic(settings, settings.topic_alerts)
    alerts = Counter(event_key(a) for a in published)
    chaos_record(
        alerts_sent_before_kill=len(sent),
        unmarked_after_kill=unmarked,
        anomalies=len(await anomaly_keys(url)),
        episode_events=len(expected),
        alerts_published=sum(alerts.values()),
        duplicate_alerts=sum(n - 1 for n in alerts.values()),
    )
    assert set(alerts) == {e.key for e in expected}
    assert max(alerts.values()) == 1, f"published twice: {[k for k, n in alerts.items() if n > 1]}"
    assert {event_body(a) for a in published} == {event_body(e) for e in await stored_events(url)}
    assert {event_body(a) for a in published} == {
        event_body(orjson.loads(encode_event(e)[1])) for e in expected
    }
    # ...because the restarted processor found them in Kafka and only marked them.
    assert f"mw_processor_alerts_already_sent_total {float(len(sent))}" in metrics


async def _no_held(conn: asyncpg.Connection) -> bool:
    return not await conn.fetch(_HELD)


def _walk(symbol: str, n: int, jumps: dict[int, float]) -> list[Tick]:
    """A +-0.05 % zig-zag from 100 with a relative jump at each index of `jumps`, 1 tick/s."""
    out, price = [], 100.0
    for i in range(n):
        price *= (1.0005 if i % 2 else 0.9995) * (1 + jumps.get(i, 0.0))
        out.append(Tick(symbol, T0 + i * 1000, round(price, 6), source="replay"))
    return out
