"""Produce N synthetic ticks into `prices`, every one acknowledged, whatever the broker does meanwhile.

Run: ``python bench/tick_producer.py --ticks 3000000 --symbols 500 --done-file done.json``
(the broker and topic come from ``MW_KAFKA_BOOTSTRAP`` / ``MW_TOPIC_PRICES``).

The producer of the broker-rollover test and bench (`bench/broker_rollover.py`): a supervised
child that the rollover pauses with SIGSTOP while the broker is replaced. Contract:
- Every symbol ticks once per second of event time (``ts`` steps of 1,000 ms, ending a minute
  before now), all symbols of a step before the next step: ``--ticks`` distinct ``(symbol, ts)``.
- Records go out in chunks of ``--chunk`` (default: 4 steps, so a retried record is never more
  than 4 s older than a stored one: within the processor's out-of-order tolerance). A chunk is
  done when EVERY record is acknowledged (``acks=all``); records that failed (broker gone,
  batch expired during a pause) are re-sent through a new producer until acknowledged. A record
  may so reach Kafka twice; the processor's idempotent writes store it once.
- At the end it writes ``{"ticks": N, "acked": N, "resent": R, "seconds": S}`` to ``--done-file``
  and exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import random
import time
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer

from mw_core.adapters import bus
from mw_core.config import Settings, load_settings

log = logging.getLogger("tick_producer")


def chunks(ticks: int, symbols: int, chunk: int, *, seed: int = 11) -> Any:
    """Yield lists of (key, value) in event-time order (see the module docstring)."""
    rng = random.Random(seed)
    names = [f"R{i:04d}USDT" for i in range(symbols)]
    keys = [n.encode() for n in names]
    prices = [rng.uniform(1, 1000) for _ in names]
    steps = math.ceil(ticks / symbols)
    t0 = int(time.time() * 1000) - steps * 1000 - 60_000
    out: list[tuple[bytes, bytes]] = []
    made = 0
    for step in range(steps):
        ts = t0 + step * 1000
        for i, name in enumerate(names):
            if made == ticks:
                break
            prices[i] *= math.exp(rng.gauss(0, 0.0004))
            out.append((keys[i], orjson.dumps({"symbol": name, "price": round(prices[i], 6), "ts": ts})))
            made += 1
            if len(out) == chunk:
                yield out
                out = []
    if out:
        yield out


async def _new_producer(settings: Settings) -> AIOKafkaProducer:
    attempt = 0
    while True:
        producer = bus.producer(settings, linger_ms=10, max_batch_size=512 * 1024)
        try:
            await producer.start()
            return producer
        except Exception as exc:  # broker restarting: retry
            attempt += 1
            log.warning("producer start failed (%s); retry %d", exc, attempt)
            await producer.stop()
            await asyncio.sleep(min(2.0, 0.1 * attempt))


async def _send_all(producer: AIOKafkaProducer, topic: str, records: list[tuple[bytes, bytes]]) -> list[int]:
    """Send, wait for every acknowledgement; return the indexes of the records that failed."""
    futures: list[Any] = []
    for key, value in records:
        try:
            futures.append(await producer.send(topic, value, key=key))
        except Exception as exc:
            futures.append(exc)
    failed: list[int] = []
    for i, fut in enumerate(futures):
        if isinstance(fut, BaseException):
            failed.append(i)
            continue
        try:
            await fut
        except Exception:
            failed.append(i)
    return failed


async def produce(settings: Settings, ticks: int, symbols: int, chunk: int) -> dict[str, Any]:
    started = time.perf_counter()
    producer = await _new_producer(settings)
    acked = resent = 0
    try:
        for records in chunks(ticks, symbols, chunk):
            pending = records
            while pending:
                failed = await _send_all(producer, settings.topic_prices, pending)
                acked += len(pending) - len(failed)
                if failed:
                    resent += len(failed)
                    log.warning("%d records not acknowledged; reconnecting and re-sending", len(failed))
                    await producer.stop()
                    producer = await _new_producer(settings)
                pending = [pending[i] for i in failed]
    finally:
        await producer.stop()
    return {
        "ticks": ticks,
        "acked": acked,
        "resent": resent,
        "seconds": round(time.perf_counter() - started, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ticks", type=int, default=3_000_000)
    parser.add_argument("--symbols", type=int, default=500)
    parser.add_argument("--chunk", type=int, default=0, help="records per chunk (default: 4 steps)")
    parser.add_argument("--done-file", type=Path, required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = load_settings()
    result = asyncio.run(produce(settings, args.ticks, args.symbols, args.chunk or 4 * args.symbols))
    log.info("done: %s", result)
    args.done_file.write_text(json.dumps(result))


if __name__ == "__main__":
    main()
