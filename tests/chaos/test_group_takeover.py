"""Two processors in one consumer group; one is SIGKILLed; the survivor takes over its partitions.

The jump is split across the kill so that only rehydrated windows can see it: each symbol rises
+1.9 % one minute before the kill and +1.9 % again one minute later (right after the kill). Each
step alone is below every threshold (60 s: 2 %, 300 s: 3 %, 900 s: 5 %); together they are +3.84 %
over the 300 s window. The survivor has never seen the killed member's symbols, so it alerts only
if it rebuilt their windows from PostgreSQL. Each symbol's alert is the `open` event (seq 1) of
its first episode, ``"<SYMBOL>-<tick ts>"``.
"""

from __future__ import annotations

import signal
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from mw_core.config import Settings
from mw_core.models import Tick
from tests.chaos.support import (
    T0,
    ProcessorProcess,
    anomaly_keys,
    event_body,
    event_key,
    fetch,
    fetchval,
    produce_ticks,
    read_topic,
    stored_events,
    stored_ticks,
    wait_for,
    with_schema,
)

pytestmark = pytest.mark.chaos

SYMBOLS = [f"G{i}XUSDT" for i in range(12)]
STEP = 1.019


def before_kill(symbol: str) -> list[Tick]:
    """240 s of a flat zig-zag, then the first +1.9 % step 60 s after the last tick."""
    out, price = [], 100.0
    for i in range(240):
        price *= 1.0005 if i % 2 else 0.9995
        out.append(Tick(symbol, T0 + i * 1000, round(price, 6), source="replay"))
    out.append(Tick(symbol, out[-1].ts + 60_000, round(price * STEP, 6), source="replay"))
    return out


def after_kill(symbol: str, last: Tick) -> Tick:
    return Tick(symbol, last.ts + 60_000, round(last.price * STEP, 6), source="replay")


@pytest.mark.timeout(120)
async def test_survivor_takes_over_rehydrates_and_detects_split_jump(
    make_settings: Callable[..., Settings], tmp_path: Path, chaos_record: Callable[..., None]
) -> None:
    settings, url = await with_schema(make_settings, prices_partitions=6)
    a = ProcessorProcess(settings, tmp_path, name="a").start()
    b = ProcessorProcess(settings, tmp_path, name="b").start()
    try:

        async def split() -> tuple[list[int], list[int]] | None:
            pa, pb = a.assigned_partitions(), b.assigned_partitions()
            if pa and pb and not set(pa) & set(pb) and sorted(pa + pb) == list(range(6)):
                return pa, pb
            return None

        _, victim_parts = await wait_for(split, timeout=60, interval=0.2, what="both members assigned")
        first = {s: before_kill(s) for s in SYMBOLS}
        partition_of = await produce_ticks(settings, [t for s in SYMBOLS for t in first[s]])
        n_first = sum(len(v) for v in first.values())

        async def stored_first() -> bool:
            return bool(await fetchval(url, "SELECT count(*) FROM prices") == n_first)

        await wait_for(stored_first, timeout=30, what="the first ticks to be stored")
        assert not await fetch(url, "SELECT 1 FROM anomalies"), "no single step may alert"
        victims = sorted(s for s in SYMBOLS if partition_of[s] in victim_parts)
        assert victims, "the killed member owned no symbol"

        b.kill(signal.SIGKILL)
        killed_at = time.monotonic()
        second = [after_kill(s, first[s][-1]) for s in SYMBOLS]
        await produce_ticks(settings, second)

        async def taken_over() -> bool:
            return a.assigned_partitions() == list(range(6))

        async def all_alerted() -> bool:
            rows = await fetch(url, "SELECT count(*) AS n FROM alert_events WHERE published_at IS NOT NULL")
            return bool(rows[0]["n"] == len(SYMBOLS))

        await wait_for(taken_over, timeout=45, interval=0.2, what="the survivor to take all partitions")
        takeover_s = time.monotonic() - killed_at
        await wait_for(all_alerted, timeout=30, what="an alert for every symbol")
        alerted_s = time.monotonic() - killed_at
        assert a.alive()
    finally:
        rc = a.stop()
        b.stop()

    stored = await stored_ticks(url)
    expected = [t for s in SYMBOLS for t in first[s]] + second
    assert set(stored) == {(t.symbol, t.ts, t.price) for t in expected}
    anomalies = await anomaly_keys(url)
    assert set(anomalies) == {(t.symbol, t.ts, 300) for t in second}
    published = await read_topic(settings, settings.topic_alerts)
    alerts = Counter(event_key(x) for x in published)
    assert set(alerts) == {(f"{t.symbol}-{t.ts}", 1) for t in second} and max(alerts.values()) == 1
    assert {x["kind"] for x in published} == {"open"}
    assert {event_body(x) for x in published} == {event_body(e) for e in await stored_events(url)}
    chaos_record(
        symbols=len(SYMBOLS),
        killed_member_partitions=victim_parts,
        killed_member_symbols=len(victims),
        takeover_s=round(takeover_s, 1),
        all_alerts_s_after_kill=round(alerted_s, 1),
        anomalies=len(anomalies),
        survivor_exit_code=rc,
    )
    assert rc == 0
