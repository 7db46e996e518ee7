"""Where the processor's results go, retried while PostgreSQL or Kafka are down.

Contract:
- `Sinks.write` makes one batch durable in ONE transaction: ticks + the latest metrics (COPY, then
  one statement), raw detections and episode events (the outbox). A batch stored before (replayed
  after a crash) fails the plain INSERT and is written again with ON CONFLICT, in a new
  transaction.
- `Sinks.with_db_retry` runs any DB call with the one retry helper (`adapters.retry`, typed
  errors); `Sinks.send_all` sends records to a topic and waits for every acknowledgement, retrying
  while Kafka fails. Meanwhile the caller does not commit offsets (nothing is lost) and
  `ProcessorStats.degraded` says why (`/healthz`). A retried send may repeat records that were
  already acknowledged (at-least-once on `dlq` / `alerts` during Kafka outages).
- `Sinks.dead_letters` publishes bad records to the dead-letter topic with one log line per batch.
- Retries give up only while the processor is stopping (`stopping` set) and after a few attempts.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from prometheus_client import Counter, Histogram

from mw_core.adapters.postgres.anomalies import insert_anomalies
from mw_core.adapters.postgres.episodes import insert_events
from mw_core.adapters.postgres.prices import MetricRow, store_batch
from mw_core.adapters.retry import DB_TRANSIENT, retry_async
from mw_core.config import Settings
from mw_core.markets import codec
from mw_core.markets.episodes import EpisodeEvent
from mw_core.models import Anomaly, DeadLetter, Tick

__all__ = ["ProcessorStats", "Sinks"]

log = logging.getLogger(__name__)

DLQ = Counter("mw_processor_dlq_total", "Records sent to the dead-letter topic", ["reason"])
DB_WRITE = Histogram(
    "mw_processor_batch_write_seconds",
    "Latency of one batch write to PostgreSQL",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
DB_FAILURES = Counter("mw_processor_db_write_failures_total", "Failed batch writes (retried)")


@dataclass
class ProcessorStats:
    consumed: int = 0
    stored: int = 0
    dead_letters: int = 0
    anomalies: int = 0
    alerts: int = 0
    batches: int = 0
    duplicates: int = 0
    late_stored: int = 0
    db_failures: int = 0
    last_commit_at: float | None = None
    degraded: str | None = None
    alert_latencies_ms: list[float] = field(default_factory=list)


class Sinks:
    """The processor's writes to PostgreSQL and Kafka, with retries (see the module contract)."""

    def __init__(self, settings: Settings, stats: ProcessorStats, stopping: asyncio.Event) -> None:
        self.settings = settings
        self.stats = stats
        self._stopping = stopping
        self.pool: asyncpg.Pool | None = None
        self.producer: AIOKafkaProducer | None = None

    async def with_db_retry(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Run a DB call, retrying while PostgreSQL is down (offsets are not committed meanwhile)."""
        failed = 0

        def on_retry(attempt: int, exc: BaseException, delay: float) -> None:
            nonlocal failed
            failed = attempt
            self.stats.db_failures += 1
            DB_FAILURES.inc()
            self.stats.degraded = f"database unavailable: {type(exc).__name__}"
            log.warning(
                "PostgreSQL write failed (%s: %s); retry %d in %.2fs, offsets NOT committed",
                type(exc).__name__,
                exc,
                attempt,
                delay,
            )

        result = await retry_async(
            fn,
            *args,
            retry_on=DB_TRANSIENT,
            give_up=lambda: self._stopping.is_set() and failed > 3,
            on_retry=on_retry,
            **kwargs,
        )
        if self.stats.degraded and failed:
            log.info("PostgreSQL is back after %d failed attempts", failed)
            self.stats.degraded = None
        return result

    async def write(
        self,
        ticks: list[Tick],
        metrics: list[MetricRow],
        anomalies: list[Anomaly],
        events: list[EpisodeEvent],
    ) -> None:
        """Ticks, metrics, raw detections and episode events (the outbox) in ONE transaction.

        BEGIN, COPY, one statement for ticks + metrics, COMMIT (plus one per table when the batch
        has anomalies or episode events).
        """
        pool = self.pool
        assert pool is not None

        async def attempt(replay: bool) -> None:
            async with pool.acquire() as conn, conn.transaction():
                await store_batch(conn, ticks, metrics, replay=replay)
                await insert_anomalies(conn, anomalies)
                await insert_events(conn, events)

        async def write() -> None:
            try:
                await attempt(False)
            except asyncpg.UniqueViolationError:
                log.info(
                    "batch of %d ticks was stored before (a replay): writing it idempotently", len(ticks)
                )
                await attempt(True)

        started = time.perf_counter()
        await self.with_db_retry(write)
        DB_WRITE.observe(time.perf_counter() - started)

    async def send_all(self, topic: str, records: list[tuple[bytes | None, bytes]]) -> None:
        """Send records and wait for every acknowledgement, retrying with backoff while Kafka fails."""
        producer = self.producer
        assert producer is not None
        failed = 0

        async def send() -> None:
            futures = [await producer.send(topic, value, key=key) for key, value in records]
            await asyncio.gather(*futures)

        def on_retry(attempt: int, exc: BaseException, delay: float) -> None:
            nonlocal failed
            failed = attempt
            self.stats.degraded = f"Kafka unavailable: {type(exc).__name__}"
            log.warning(
                "send of %d records to %s failed (%s: %s); retry %d in %.2fs, offsets NOT committed",
                len(records),
                topic,
                type(exc).__name__,
                exc,
                attempt,
                delay,
            )

        await retry_async(
            send,
            retry_on=(KafkaError,),
            give_up=lambda: self._stopping.is_set() and failed > 3,
            on_retry=on_retry,
        )
        if failed:
            log.info("Kafka is back after %d failed sends to %s", failed, topic)
            self.stats.degraded = None

    async def dead_letters(self, dead: list[DeadLetter]) -> None:
        """Publish bad records to the dead-letter topic; one warning line per batch."""
        for dl in dead:
            DLQ.labels(dl.reason).inc()
        topic = self.settings.topic_dlq
        await self.send_all(topic, [(None, codec.encode_dead_letter(dl)) for dl in dead])
        self.stats.dead_letters += len(dead)
        reasons: dict[str, int] = {}
        for dl in dead:
            reasons[dl.reason] = reasons.get(dl.reason, 0) + 1
        log.warning(
            "sent %d bad records to %s: %s (first: %s)", len(dead), topic, reasons, dead[0].detail[:200]
        )
