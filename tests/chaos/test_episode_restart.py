"""SIGKILL the processor in the middle of real crash-day episodes; each restart continues them.

Real data, default settings (episodes on, escalation step 1.5, quiet period 3600 s): the
2024-08-05 crash day of ADAUSDT, BTCUSDT and SOLUSDT (1-minute klines, tick = (close time,
close)), 4,320 ticks on 3 partitions. The ticks are produced in segments. The cuts are taken from
THE analysis path run in memory: right after each SOLUSDT `open` whose episode has a later event
(minutes 68, 310 and 810 of the day), so at every kill an episode is open and its escalation
(seq 2) or close comes only in the next segment. For each segment: produce it, start a new
`mw process`, wait until every tick is stored and every outbox row is published, then SIGKILL
it (its last offsets may be uncommitted: the next incarnation replays them). The new incarnation
has never seen the open episode; it must rebuild it from the stored detections (like the
cooldown) and continue it: same episode_id, next seq, never a second `open`.

A reference processor (its own database, group and alerts topic) reads the same ticks and is
never disturbed. Checked: no (episode_id, seq) twice on the alerts topic; the published events
equal the reference's field for field (peak, extreme price, summary included) and the in-memory
analysis's keys; `alert_episodes` equals the reference's; every episode open at a kill continues
after the restart with the next seq, published by the new incarnation.
"""

from __future__ import annotations

import signal
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from itertools import pairwise
from pathlib import Path

import pytest

from mw_core.config import Settings
from mw_core.markets.episodes import EpisodeEvent
from mw_core.models import Tick
from mw_core.replay.klines import read_kline_file
from tests.chaos.support import (
    ProcessorProcess,
    anomaly_keys,
    clean_twin,
    ensure_schema,
    event_body,
    event_key,
    fetch,
    produce_ticks,
    pure_events,
    read_topic,
    settled,
    stored_events,
    wait_for,
    with_schema,
)
from tests.conftest import FIXTURES

pytestmark = pytest.mark.chaos

SYMBOLS = ("ADAUSDT", "BTCUSDT", "SOLUSDT")
DAY = "2024-08-05"
CUT_SYMBOL = "SOLUSDT"

_EPISODES = """
SELECT episode_id, symbol, (extract(epoch FROM opened_at) * 1000)::int8 AS opened_ms,
       (extract(epoch FROM closed_at) * 1000)::int8 AS closed_ms, direction, ref_price, last_seq,
       peak_ret, peak_window_s, extreme_price, summary
FROM alert_episodes ORDER BY episode_id
"""


def crash_day() -> list[Tick]:
    """The day's ticks of all symbols in event-time order."""
    ticks = [k.to_tick() for s in SYMBOLS for k in read_kline_file(FIXTURES / f"{s}-1m-{DAY}.csv").klines]
    return sorted(ticks, key=lambda t: (t.ts, t.symbol))


def cuts_mid_episode(ticks: list[Tick], events: list[EpisodeEvent]) -> list[tuple[int, EpisodeEvent]]:
    """(index of the first tick after the open, the open) for each `CUT_SYMBOL` open with a sequel."""
    continued = {e.episode_id for e in events if e.seq > 1}
    out = []
    for e in events:
        if e.symbol == CUT_SYMBOL and e.kind == "open" and e.episode_id in continued:
            out.append((next(i for i, t in enumerate(ticks) if t.ts > e.ts), e))
    return out


@pytest.mark.timeout(240)
async def test_sigkill_mid_episode_rebuilds_it_and_publishes_each_event_once(
    make_settings: Callable[..., Settings],
    make_db: Callable[[], Awaitable[str]],
    tmp_path: Path,
    chaos_record: Callable[..., None],
) -> None:
    settings, url = await with_schema(make_settings, prices_partitions=3)
    assert settings.episodes_enabled
    clean_url = await make_db()
    clean = clean_twin(make_settings, settings, clean_url, prices_partitions=3)
    await ensure_schema(clean_url)
    ticks = crash_day()
    expected = pure_events(settings, ticks)
    cuts = cuts_mid_episode(ticks, expected)
    assert len(cuts) >= 3, cuts
    bounds = [0, *(i for i, _ in cuts), len(ticks)]
    segments = [ticks[a:b] for a, b in pairwise(bounds)]

    started = time.monotonic()
    reference = ProcessorProcess(clean, tmp_path / "clean", name="clean").start()
    kills: list[dict[str, object]] = []
    sent_at_kill: list[set[tuple[str, int]]] = []
    proc: ProcessorProcess | None = None
    produced = 0
    try:
        for k, segment in enumerate(segments):
            await produce_ticks(settings, segment)
            produced += len(segment)
            spawned_at = time.monotonic()
            proc = ProcessorProcess(settings, tmp_path / "chaos", name=f"chaos-{k}").start()
            await wait_for(
                lambda n=produced: settled(url, n),  # type: ignore[misc]
                timeout=60,
                interval=0.1,
                what=f"segment {k} stored and published",
            )
            settled_s = time.monotonic() - spawned_at
            if k == len(segments) - 1:
                break
            _, opened = cuts[k]
            still_open = {r["episode_id"] for r in await fetch(url, _EPISODES) if r["closed_ms"] is None}
            assert opened.episode_id in still_open, f"{opened.episode_id} is not open at the kill"
            sent = {event_key(a) for a in await read_topic(settings, settings.topic_alerts)}
            assert opened.key in sent
            proc.kill(signal.SIGKILL)
            sent_at_kill.append(sent)
            kills.append(
                {
                    "cut_minute": bounds[k + 1] // len(SYMBOLS),
                    "open_episodes": sorted(still_open),
                    "events_sent": len(sent),
                    "s_to_settle_segment": round(settled_s, 1),
                }
            )
        await wait_for(lambda: settled(clean_url, len(ticks)), timeout=60, what="the reference run")
    finally:
        rc_chaos = proc.stop() if proc is not None else None
        rc_clean = reference.stop()
    elapsed = time.monotonic() - started

    published = await read_topic(settings, settings.topic_alerts)
    counts = Counter(event_key(a) for a in published)
    duplicates = {key: n for key, n in counts.items() if n > 1}
    clean_published = await read_topic(clean, clean.topic_alerts)
    continued = []
    for k, (_, opened) in enumerate(cuts):
        sequel = next(e for e in expected if e.episode_id == opened.episode_id and e.seq == opened.seq + 1)
        continued.append(f"{sequel.episode_id} #{sequel.seq} {sequel.kind}")
        # Published after the restart (not before the kill) with the same episode_id and the next seq.
        assert sequel.key not in sent_at_kill[k] and counts[sequel.key] == 1, sequel
    chaos_record(
        ticks=len(ticks),
        kills=len(kills),
        elapsed_s=round(elapsed, 1),
        anomalies=len(await anomaly_keys(url)),
        events_published=sum(counts.values()),
        events_by_kind=dict(sorted(Counter(a["kind"] for a in published).items())),
        duplicate_events=sum(n - 1 for n in duplicates.values()),
        continued_after_restart=continued,
        per_kill=kills,
        exit_codes=(rc_chaos, rc_clean),
    )
    assert not duplicates, f"published more than once: {sorted(duplicates)}"
    assert set(counts) == {e.key for e in expected}
    assert {event_body(a) for a in published} == {event_body(a) for a in clean_published}
    assert len(clean_published) == len(expected)
    assert {event_body(e) for e in await stored_events(url)} == {event_body(a) for a in published}
    chaos_episodes = [dict(r) for r in await fetch(url, _EPISODES)]
    assert chaos_episodes == [dict(r) for r in await fetch(clean_url, _EPISODES)]
    assert all(r["closed_ms"] is not None for r in chaos_episodes)  # every episode of the day closed
    assert set(await anomaly_keys(url)) == set(await anomaly_keys(clean_url))
    assert (await read_topic(settings, settings.topic_dlq)) == []
    assert rc_chaos == 0 and rc_clean == 0
