"""The alerts outbox of the processor: `alert_events` -> `alerts` topic, effectively once.

Contract:
- `Outbox.publish(pool, symbols, ...)` sends the unpublished episode events of `symbols` (the ones
  this group member owns), waits for every acknowledgement, then marks them published. It runs
  after the batch's transaction committed and before its offsets are committed.
- Outbox rows a previous owner left unmarked (it died between the send and the mark) were found
  at rehydration (`suspect`): before sending them, the alerts topic is read once and the ones
  already there are only marked. So a crash never publishes an event twice; if that read fails or
  takes longer than `ALERTS_READ_TIMEOUT_S`, they are sent (a possible duplicate beats a lost
  alert).
- Database calls and sends go through the processor's retrying callables (offsets stay
  uncommitted while PostgreSQL or Kafka is down).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import asyncpg
from aiokafka import TopicPartition
from aiokafka.errors import KafkaError
from prometheus_client import Counter, Histogram

from mw_core.adapters import bus
from mw_core.adapters.postgres.episodes import mark_events_published, unpublished_events
from mw_core.config import Settings
from mw_core.markets import codec
from mw_core.markets.episodes import EpisodeEvent

log = logging.getLogger(__name__)

#: The longest a look-up of orphaned alerts in the alerts topic may take; after that they are sent.
ALERTS_READ_TIMEOUT_S = 60.0

ALERTS = Counter("mw_processor_alerts_published_total", "Alerts published")
ALERTS_ALREADY_SENT = Counter(
    "mw_processor_alerts_already_sent_total",
    "Unmarked outbox rows found already published by a dead owner (marked, not re-sent)",
)
TICK_TO_ALERT = Histogram(
    "mw_processor_tick_to_alert_seconds",
    "From the tick's Kafka timestamp to its alert being published",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)

DbCall = Callable[..., Awaitable[Any]]
SendCall = Callable[[str, list[tuple[bytes | None, bytes]]], Awaitable[None]]


class Outbox:
    """Publishes `alert_events` rows to the alerts topic (see module docstring)."""

    def __init__(
        self, settings: Settings, *, db: DbCall, send: SendCall, latencies_ms: list[float] | None
    ) -> None:
        self.settings = settings
        self._db = db
        self._send = send
        self.latencies_ms = latencies_ms
        # Keys of outbox rows found unpublished when their symbol was rehydrated: a dead previous
        # owner may have sent them already (see `_skip_already_sent`).
        self.unconfirmed: set[tuple[str, int]] = set()

    def suspect(self, keys: Iterable[tuple[str, int]]) -> None:
        self.unconfirmed.update(keys)

    def forget(self, symbols: set[str]) -> None:
        """Drop the suspects of symbols whose partition moved away (episode ids start with the symbol)."""
        self.unconfirmed = {k for k in self.unconfirmed if k[0].rsplit("-", 1)[0] not in symbols}

    async def publish(
        self, pool: asyncpg.Pool, symbols: list[str], anomaly_times: dict[tuple[str, int], int]
    ) -> int:
        """Publish unpublished episode events of the symbols this member owns, then mark them."""
        rows = await self._db(unpublished_events, pool, limit=10_000, symbols=symbols)
        if rows and self.unconfirmed:
            rows = await self._skip_already_sent(pool, rows)
        if not rows:
            return 0
        await self._send(self.settings.topic_alerts, [codec.encode_event(e) for _, e in rows])
        now = time.time()
        for _, e in rows:
            kafka_ts = anomaly_times.get((e.symbol, e.ts))
            if kafka_ts is not None and kafka_ts > 0:
                latency = max(0.0, now - kafka_ts / 1000)
                TICK_TO_ALERT.observe(latency)
                if self.latencies_ms is not None:
                    self.latencies_ms.append(latency * 1000)
        await self._db(mark_events_published, pool, [i for i, _ in rows])
        ALERTS.inc(len(rows))
        for _, e in rows[:20]:
            log.info("ALERT %s #%d %s: %s", e.kind, e.seq, e.episode_id, e.summary)
        return len(rows)

    async def _skip_already_sent(
        self, pool: asyncpg.Pool, rows: list[tuple[int, EpisodeEvent]]
    ) -> list[tuple[int, EpisodeEvent]]:
        """Mark, and drop from `rows`, the orphaned outbox rows whose event is already in `alerts`.

        A row is orphaned when it was unpublished at rehydration: its previous owner may have died
        after the Kafka send but before the `published_at` update. Only then is the alerts topic
        read (once per recovery that finds orphans; never in steady state). If that read fails, the
        rows are sent: a possible duplicate beats a lost alert.
        """
        suspects = {e.key for _, e in rows if e.key in self.unconfirmed}
        if not suspects:
            return rows
        self.unconfirmed -= suspects
        try:
            # Bounded as a whole: a position lookup on a topic the broker lost can wait forever.
            found = await asyncio.wait_for(self._alerts_in_topic(suspects), ALERTS_READ_TIMEOUT_S)
        except (KafkaError, OSError, TimeoutError) as exc:
            log.warning(
                "could not read %s to check %d possibly published alerts (%s: %s); sending them",
                self.settings.topic_alerts,
                len(suspects),
                type(exc).__name__,
                exc,
            )
            return rows
        if not found:
            return rows
        await self._db(mark_events_published, pool, [i for i, e in rows if e.key in found])
        ALERTS_ALREADY_SENT.inc(len(found))
        log.warning(
            "%d alerts were already in %s (their previous owner died before marking them): "
            "marked published, not sent again",
            len(found),
            self.settings.topic_alerts,
        )
        return [(i, e) for i, e in rows if e.key not in found]

    async def _alerts_in_topic(self, keys: set[tuple[str, int]]) -> set[tuple[str, int]]:
        """Which of `keys` have an alert in the alerts topic (every partition read to its end)."""
        topic = self.settings.topic_alerts
        consumer = bus.consumer(self.settings, group_id=None)
        await consumer.start()
        try:
            await consumer.topics()  # refresh metadata
            tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
            if not tps:
                return set()
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            found: set[tuple[str, int]] = set()
            while found != keys:
                batch = await consumer.getmany(timeout_ms=200)
                for records in batch.values():
                    for rec in records:
                        key = codec.event_key(rec.value)
                        if key in keys:
                            found.add(key)
                # The high watermark of fetch responses is exact (Tansu's `end_offsets` is not).
                at_end = [(consumer.highwater(tp), await consumer.position(tp)) for tp in tps]
                if not batch and all(hw is not None and pos >= hw for hw, pos in at_end):
                    break
            return found
        finally:
            await consumer.stop()
