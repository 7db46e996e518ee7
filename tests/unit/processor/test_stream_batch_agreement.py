"""Stream/batch agreement by construction: the processor's analysis path == the batch path.

The same tick sequences (shuffled, duplicated, late, out of order, REST backfill ticks) go
(a) through `Processor.prepare_batch` (decode -> admission -> windows -> detector, exactly what
`mw process` runs per consumed batch, batch boundaries drawn at random) and (b) through the batch
entry point `analyse_series` symbol by symbol. Anomalies and dead-letter reasons must be equal.
No broker or database is touched: every symbol is hydrated (empty) up front, so the processor
never needs PostgreSQL for this.
"""

from __future__ import annotations

import asyncio
import itertools
import random

import pytest
from aiokafka import TopicPartition
from aiokafka.structs import ConsumerRecord
from hypothesis import given, settings
from hypothesis import strategies as st

from mw_core.config import Settings
from mw_core.markets import codec
from mw_core.markets.analysis import analyse_series
from mw_core.models import Anomaly, Tick
from mw_core.processor.service import Processor

pytestmark = pytest.mark.unit

T0 = 1_722_816_000_000  # 2024-08-05 00:00 UTC
SYMBOLS = ("BTCUSDT", "SOLUSDT")


def make_sequence(seed: int, n: int) -> list[Tick]:
    """A random walk per symbol, then disturbed like a real feed: dups, late, reordered, backfill."""
    rnd = random.Random(seed)
    clean: list[Tick] = []
    for symbol in SYMBOLS:
        ts, price = T0, 100.0
        for _ in range(n):
            ts += rnd.choice([1, 250, 1000, 5000, 30_000, 60_000])
            price *= 1 + rnd.choice([rnd.gauss(0, 0.001), rnd.gauss(0, 0.015), rnd.gauss(0, 0.04)])
            clean.append(Tick(symbol, ts, max(price, 1e-6)))
    clean.sort(key=lambda t: t.ts)
    out: list[Tick] = []
    for tick in clean:
        out.append(tick)
        roll = rnd.random()
        if roll < 0.05:
            out.append(tick)  # duplicate (re-sent record)
        elif roll < 0.10 and len(out) > 3:
            old = out[-rnd.randint(2, min(len(out), 40))]
            out.append(old._replace(source=rnd.choice(["ws", "rest_backfill"])))  # late / backfill
    # Local shuffles: swap some neighbours (out-of-order arrival).
    for i in range(len(out) - 1):
        if rnd.random() < 0.05:
            out[i], out[i + 1] = out[i + 1], out[i]
    return out


def stream_path(ticks: list[Tick], cuts: list[int], cfg: Settings) -> tuple[list[Anomaly], list[str]]:
    proc = Processor(cfg, database_url="postgresql://unused/never-connected")
    for symbol in SYMBOLS:  # hydrated: no database needed
        proc.analyzer.hydrate(symbol, [])
        proc.partition_of[symbol] = 0
    tp = TopicPartition(cfg.topic_prices, 0)
    anomalies: list[Anomaly] = []
    reasons: list[str] = []
    bounds = [0, *sorted(set(cuts)), len(ticks)]
    for lo, hi in itertools.pairwise(bounds):
        records = []
        for offset, tick in enumerate(ticks[lo:hi], start=lo):
            key, value = codec.encode_tick(tick)
            records.append(
                ConsumerRecord(
                    cfg.topic_prices, 0, offset, tick.ts, 0, key, value, None, len(key), len(value), ()
                )
            )
        if not records:
            continue
        prepared = asyncio.run(proc.prepare_batch({tp: records}))
        anomalies.extend(prepared.anomalies)
        reasons.extend(f"{d.reason}:{d.detail}" for d in prepared.dead)
    return anomalies, reasons


def batch_path(ticks: list[Tick], cfg: Settings) -> tuple[list[Anomaly], list[str]]:
    anomalies: list[Anomaly] = []
    reasons: list[str] = []
    for symbol in SYMBOLS:
        res = analyse_series(
            symbol,
            [t for t in ticks if t.symbol == symbol],
            windows_s=cfg.windows_s,
            threshold_for=cfg.threshold_for,
            cooldown_s=cfg.cooldown_s,
            max_out_of_order_s=cfg.max_out_of_order_s,
        )
        anomalies.extend(res.anomalies)
        reasons.extend(f"{r.reason}:{r.detail}" for r in res.rejected)
    return anomalies, reasons


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32),
    n=st.integers(1, 400),
    cuts=st.lists(st.integers(0, 900), max_size=6),
    cooldown_s=st.sampled_from([0, 60, 300]),
    tolerance_s=st.sampled_from([0, 5, 60]),
)
def test_stream_and_batch_agree(
    seed: int, n: int, cuts: list[int], cooldown_s: int, tolerance_s: int
) -> None:
    cfg = Settings(cooldown_s=cooldown_s, max_out_of_order_s=tolerance_s)
    ticks = make_sequence(seed, n)
    s_anomalies, s_reasons = stream_path(ticks, cuts, cfg)
    b_anomalies, b_reasons = batch_path(ticks, cfg)
    key = lambda a: (a.ts, a.symbol)  # noqa: E731 - sort key
    assert sorted(s_anomalies, key=key) == sorted(b_anomalies, key=key)
    assert sorted(s_reasons) == sorted(b_reasons)


def test_the_generator_really_produces_every_kind_of_disturbance() -> None:
    """Guards the property above against a generator that silently stopped disturbing."""
    cfg = Settings(max_out_of_order_s=5)
    ticks = make_sequence(7, 400)
    res = [
        analyse_series(
            s,
            [t for t in ticks if t.symbol == s],
            windows_s=cfg.windows_s,
            threshold_for=cfg.threshold_for,
            cooldown_s=60,
            max_out_of_order_s=5,
        )
        for s in SYMBOLS
    ]
    assert sum(r.duplicates for r in res) > 0
    assert sum(r.late_stored for r in res) > 0
    assert sum(len(r.rejected) for r in res) > 0
    assert sum(len(r.anomalies) for r in res) > 0
    assert any(t.source == "rest_backfill" for t in ticks)
