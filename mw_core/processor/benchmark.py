"""`mw bench processor`: end-to-end processor throughput and latency on real components.

Produces N ticks for S symbols (1-second geometric random walks, seeded, with a few injected
jumps) into a fresh topic, runs the real `Processor` to completion (DB writes and offset commits
included) and, in the same run, a plain aiokafka consume loop that only decodes (the ceiling).
With `rate > 0` the producer paces itself and the processor runs concurrently, which measures
tick -> alert latency under a steady load.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
import uuid
from typing import Any

import orjson
import psutil

from mw_core.adapters import bus
from mw_core.adapters.postgres.pool import create_pool
from mw_core.adapters.postgres.schema import apply_schema
from mw_core.config import Settings
from mw_core.processor.service import Processor, tune_gc


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    idx = min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))
    return ordered[idx]


def _ticks(n: int, symbols: int, *, seed: int = 7) -> tuple[list[str], list[bytes], list[bytes]]:
    rng = random.Random(seed)  # noqa: S311 - synthetic data, not crypto
    names = [f"B{i:04d}USDT" for i in range(symbols)]
    prices = [rng.uniform(1, 1000) for _ in names]
    per_symbol = math.ceil(n / symbols)
    t0 = int(time.time() * 1000) - per_symbol * 1000 - 60_000
    jumps = {(rng.randrange(symbols), rng.randrange(120, max(121, per_symbol))) for _ in range(10)}
    keys: list[bytes] = []
    values: list[bytes] = []
    for step in range(per_symbol):
        ts = t0 + step * 1000
        for i, name in enumerate(names):
            if len(values) == n:
                break
            prices[i] *= math.exp(rng.gauss(0, 0.0004))
            if (i, step) in jumps:
                prices[i] *= 1.06
            keys.append(name.encode())
            values.append(
                orjson.dumps({"symbol": name, "price": round(prices[i], 6), "ts": ts, "source": "bench"})
            )
    return names, keys, values


async def _produce(settings: Settings, keys: list[bytes], values: list[bytes], rate: float) -> float:
    producer = bus.producer(settings, linger_ms=5 if rate else 20, max_batch_size=512 * 1024)
    await producer.start()
    started = time.perf_counter()
    try:
        chunk = max(1, int(rate / 100)) if rate else 10_000
        for start in range(0, len(values), chunk):
            for k, v in zip(keys[start : start + chunk], values[start : start + chunk], strict=True):
                await producer.send(settings.topic_prices, v, key=k)
            if rate:
                target = started + (start + chunk) / rate
                delay = target - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
        await producer.flush()
    finally:
        await producer.stop()
    return time.perf_counter() - started


async def _ceiling(settings: Settings, expected: int) -> float:
    consumer = bus.consumer(settings, settings.topic_prices, group_id=f"ceiling-{uuid.uuid4().hex[:6]}")
    await consumer.start()
    seen = 0
    started = time.perf_counter()
    try:
        while seen < expected:
            batch = await consumer.getmany(timeout_ms=1000, max_records=20_000)
            for records in batch.values():
                for rec in records:
                    orjson.loads(rec.value)  # type: ignore[arg-type]
                seen += len(records)
    finally:
        await consumer.stop()
    return seen / (time.perf_counter() - started)


async def _bench(settings: Settings, ticks: int, symbols: int, rate: float) -> dict[str, Any]:
    suffix = uuid.uuid4().hex[:8]
    settings = settings.model_copy(
        update={
            "topic_prices": f"bench-prices-{suffix}",
            "consumer_group": f"bench-{suffix}",
            "topic_alerts": f"bench-alerts-{suffix}",
            "topic_dlq": f"bench-dlq-{suffix}",
        }
    )
    assert settings.database_url is not None
    pool = await create_pool(settings.database_url.get_secret_value())
    await apply_schema(pool)
    await pool.execute("TRUNCATE prices, metrics, anomalies CASCADE")
    await bus.ensure_topics(settings)
    _, keys, values = _ticks(ticks, symbols)
    proc = psutil.Process()
    result: dict[str, Any] = {"ticks": len(values), "symbols": symbols, "rate": rate or "max"}

    processor = Processor(settings, record_latencies=True)
    if rate:
        await processor.start()
        rss_start = proc.memory_info().rss
        run = asyncio.create_task(processor.run(idle_exit_s=3.0))
        produce_s = await _produce(settings, keys, values, rate)
        stats = await run
        result["produce_seconds"] = round(produce_s, 2)
    else:
        produce_s = await _produce(settings, keys, values, 0)
        result["produce_seconds"] = round(produce_s, 2)
        expected = len(values)
        del keys, values  # the processor must not pay for the producer's data in GC / RSS
        await processor.start()
        tune_gc()  # as `mw process` does
        rss_start = proc.memory_info().rss
        started = time.perf_counter()
        stats = await processor.run(idle_exit_s=2.0)
        elapsed = time.perf_counter() - started - 2.0
        result["processor_ticks_per_s"] = round(stats.consumed / elapsed)
        result["ceiling_decode_only_ticks_per_s"] = round(await _ceiling(settings, expected))
    rss_end = proc.memory_info().rss
    stored = await pool.fetchval("SELECT count(*) FROM prices")
    result.update(
        {
            "stored_rows": int(stored),
            "lost": result["ticks"] - int(stored),
            "anomalies": stats.anomalies,
            "alerts": stats.alerts,
            "latency_p50_ms": _percentile(stats.alert_latencies_ms, 0.5),
            "latency_p99_ms": _percentile(stats.alert_latencies_ms, 0.99),
            "rss_start_mb": round(rss_start / 2**20, 1),
            "rss_end_mb": round(rss_end / 2**20, 1),
            "rss_per_symbol_kb": round(max(0, rss_end - rss_start) / max(1, symbols) / 1024, 1),
        }
    )
    await pool.close()
    return result


def run_processor_bench(settings: Settings, *, ticks: int, symbols: int, rate: float = 0.0) -> dict[str, Any]:
    """Run the benchmark on the servers `settings` name (the CLI resolves embedded ones first)."""
    return asyncio.run(_bench(settings, ticks, symbols, rate))
