"""The notifier: `alerts` topic -> every configured channel, at least once, deduplicated.

Contract (delivery state lives in PostgreSQL, `notification_deliveries`):
1. Consume `alerts` as consumer group `settings.notify_group` (manual commits). Records with
   ``"type": "episode"`` (open / escalate / close) and ``"type": "enrichment"`` (the LLM follow-up,
   kind ``summary``) are handled; other types are ignored; malformed ones go to the DLQ with the
   reason and one log line.
2. Routing: a channel receives an event when its route accepts it (`mw_core.notify.routing`);
   a follow-up goes only to the channels its alert was queued for.
3. For each (event, channel) a ``queued`` row holding the record is written; only THEN is the
   batch's offset committed. So a crash never drops an event: it is either re-read from Kafka
   or found queued in the table at start-up (`pending`), and the partial unique index makes the
   re-read queue nothing twice. A commit that fails (the group rebalanced) is logged and the
   batch is re-read by the partitions' owner. A committed offset of this member's own that
   points into another log (a restarted memory-only broker, `mw_core.adapters.commits`) makes it
   read that partition from the beginning.
4. Each channel's `ChannelWorker` delivers its queue in order (rate limit, retries, circuit
   breaker, DLQ: see `mw_core.notify.worker`). A (event, channel) pair is final when it has a
   ``delivered`` or ``dead`` row; a delivered pair is never sent again by a restart. The window
   between a receiver accepting and the ``delivered`` row (a SIGKILL there) is the one source
   of a repeat: at-least-once, and the webhook's ``Idempotency-Key`` lets receivers drop it.
5. `health()` (for ``/healthz``) and `stats()` (per channel: delivered, failed, parked, dead,
   backlog, circuit state) report progress; Prometheus metrics are labelled by channel id only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import asyncpg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.structs import ConsumerRecord
from prometheus_client import Counter, Gauge, Histogram

from mw_core.adapters import bus
from mw_core.adapters.commits import CommitGuard, batch_stamps
from mw_core.adapters.postgres import notifications as store
from mw_core.adapters.postgres.pool import create_pool
from mw_core.adapters.postgres.schema import apply_schema
from mw_core.adapters.retry import DB_TRANSIENT, KAFKA_TRANSIENT, retry_async
from mw_core.config import Settings
from mw_core.markets import codec
from mw_core.models import DeadLetter
from mw_core.notify.channels import Channel, build_channels, idempotency_key
from mw_core.notify.messages import Alert, BadAlert, decode_alert
from mw_core.notify.worker import ChannelWorker, Job

log = logging.getLogger(__name__)
T = TypeVar("T")

CONSUMED = Counter("mw_notify_records_total", "Records read from the alerts topic", ["type"])
ATTEMPTS = Counter("mw_notify_attempts_total", "Delivery attempts", ["channel", "status"])
LATENCY = Histogram(
    "mw_notify_delivery_seconds",
    "Latency of a successful delivery attempt",
    ["channel"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
BACKLOG = Gauge("mw_notify_backlog", "Events waiting for a channel", ["channel"])
CIRCUIT_OPEN = Gauge("mw_notify_circuit_open", "1 while a channel is parked", ["channel"])


def _observe(channel: str, status: str, latency_ms: float | None) -> None:
    ATTEMPTS.labels(channel, status).inc()
    if latency_ms is not None:
        LATENCY.labels(channel).observe(latency_ms / 1000.0)


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, svc: NotifyService) -> None:
        self.svc = svc

    async def on_partitions_revoked(self, revoked: Sequence[TopicPartition]) -> None:
        self.svc._guard.forget(revoked)

    async def on_partitions_assigned(self, assigned: Sequence[TopicPartition]) -> None:
        svc = self.svc
        if svc._consumer is not None and svc._guard.knows(assigned):
            async with svc._busy:  # no batch is handled while positions may still move
                await svc._guard.check(svc._consumer, assigned)


class NotifyService:
    """One notifier process (one member of `settings.notify_group`)."""

    def __init__(
        self,
        settings: Settings,
        *,
        channels: list[Channel] | None = None,
        backoff_base_s: float = 0.5,
        backoff_cap_s: float = 30.0,
    ) -> None:
        if settings.database_url is None:
            raise ValueError("MW_DATABASE_URL is not set and no embedded database was started")
        self.settings = settings
        self.channels = channels if channels is not None else build_channels(settings)
        self.workers = {
            ch.id: ChannelWorker(
                ch,
                record=self._record,
                dead_letter=self._dead_letter,
                max_attempts=settings.notify_max_attempts,
                rate_per_min=settings.notify_rate_per_min,
                burst=settings.notify_burst,
                circuit_failures=settings.notify_circuit_failures,
                circuit_open_s=settings.notify_circuit_open_s,
                backoff_base_s=backoff_base_s,
                backoff_cap_s=backoff_cap_s,
                observe=_observe,
            )
            for ch in self.channels
        }
        self.consumed = 0
        self.ignored = 0
        self.malformed = 0
        self.degraded: str | None = None
        self._stopping = asyncio.Event()
        self._pool: asyncpg.Pool | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self._guard = CommitGuard(settings)
        self._busy = asyncio.Lock()  # held while a batch is handled and committed

    # --- lifecycle -----------------------------------------------------------------------------
    async def start(self) -> None:
        """Connect, migrate, reload the unfinished deliveries in order, start the channel workers."""
        assert self.settings.database_url is not None
        self._pool = await create_pool(self.settings.database_url.get_secret_value(), min_size=1, max_size=4)
        await apply_schema(self._pool)
        await bus.ensure_topics(self.settings)
        self._producer = bus.producer(self.settings, linger_ms=0)
        await self._producer.start()
        reloaded = 0
        for row in await store.pending(self._pool, list(self.workers)):
            alert = decode_alert(row.payload)
            if alert is not None:
                self.workers[row.channel].submit(Job(alert, row.idempotency_key, row.attempts))
                reloaded += 1
        for worker in self.workers.values():
            worker.start()
        self._consumer = bus.consumer(
            self.settings, group_id=self.settings.notify_group, max_poll_records=500
        )
        self._consumer.subscribe([self.settings.topic_alerts], listener=_Rebalance(self))
        await self._consumer.start()
        log.info(
            "notifier started: group=%s topic=%s channels=%s reloaded=%d",
            self.settings.notify_group,
            self.settings.topic_alerts,
            [ch.name for ch in self.channels],
            reloaded,
        )

    def stop(self) -> None:
        """Ask `run` to finish the current batch and return."""
        self._stopping.set()

    async def close(self) -> None:
        """Stop the workers (each finishes its attempt in flight) and disconnect."""
        for worker in self.workers.values():
            await worker.stop()
        for ch in self.channels:
            with contextlib.suppress(Exception):
                await ch.close()
        with contextlib.suppress(Exception):
            if self._consumer is not None:
                await self._consumer.stop()
        with contextlib.suppress(Exception):
            if self._producer is not None:
                await self._producer.stop()
        if self._pool is not None:
            await self._pool.close()
        self._consumer = self._producer = self._pool = None

    async def run(self, *, idle_exit_s: float | None = None) -> None:
        """Consume until `stop()` (or `idle_exit_s` without records once every channel is idle)."""
        if self._consumer is None:
            await self.start()
        assert self._consumer is not None
        idle_since = time.monotonic()
        try:
            while not self._stopping.is_set():
                batch = await self._consumer.getmany(
                    timeout_ms=self.settings.batch_timeout_ms, max_records=500
                )
                self._update_gauges()
                if batch:
                    async with self._busy:
                        if not self._guard.rewound_to or self._guard.skip_until_rewound(batch):
                            await self._handle([r for part in batch.values() for r in part])
                            await self._commit(batch)
                    idle_since = time.monotonic()
                elif (
                    idle_exit_s is not None
                    and time.monotonic() - idle_since >= idle_exit_s
                    and all(w.backlog == 0 for w in self.workers.values())
                ):
                    break
        finally:
            await self.close()

    async def _commit(self, batch: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]) -> None:
        """Commit a handled batch; a failure (the group rebalanced) leaves it to the new owner."""
        assert self._consumer is not None
        offsets = {tp: records[-1].offset + 1 for tp, records in batch.items() if records}
        self._guard.note(offsets, batch_stamps(batch))
        await self._guard.commit(self._consumer, offsets)  # a re-read batch queues nothing twice

    async def drain(self, *, timeout_s: float) -> None:
        """Wait until every channel's queue is empty (tests, `mw replay --json`)."""
        await asyncio.wait_for(
            asyncio.gather(*(w.wait_idle() for w in self.workers.values())), timeout=timeout_s
        )

    # --- one batch -----------------------------------------------------------------------------
    async def _handle(self, records: list[ConsumerRecord[bytes, bytes]]) -> None:
        alerts: list[Alert] = []
        dead: list[DeadLetter] = []
        for rec in records:
            self.consumed += 1
            try:
                alert = decode_alert(rec.value)
            except BadAlert as exc:
                self.malformed += 1
                CONSUMED.labels("malformed").inc()
                log.warning(
                    "notify: malformed alerts record at offset %s -> DLQ (%s)", rec.offset, exc.reason
                )
                dead.append(DeadLetter(exc.reason, f"notify:{rec.topic}", rec.value or b"", exc.detail))
                continue
            if alert is None:
                self.ignored += 1
                CONSUMED.labels("other").inc()
                continue
            CONSUMED.labels(alert.kind).inc()
            alerts.append(alert)
        jobs = await self._route(alerts)
        new_keys = await self._db(store.enqueue, [row for row, _ in jobs])
        for row, job in jobs:
            if row.idempotency_key in new_keys:
                self.workers[row.channel].submit(job)
        for letter in dead:
            await self._send_dlq(letter)

    async def _route(self, alerts: list[Alert]) -> list[tuple[store.NewDelivery, Job]]:
        """(row to queue, job) per accepted (alert, channel), in record order."""
        parents = [idempotency_key_for(a, ch) for a in alerts if a.kind == "summary" for ch in self.channels]
        known = await self._db(store.queued_keys, parents) if parents else set()
        out: list[tuple[store.NewDelivery, Job]] = []
        for alert in alerts:
            for ch in self.channels:
                if not ch.route.accepts(symbol=alert.symbol, kind=alert.kind, ret=alert.ret):
                    continue
                if alert.kind == "summary" and idempotency_key_for(alert, ch) not in known:
                    continue  # its alert did not go to this channel
                key = idempotency_key(alert, ch.id)
                if alert.kind != "summary":
                    known.add(key)
                row = store.NewDelivery(ch.id, ch.name, alert.key, key, alert.raw)
                out.append((row, Job(alert, key)))
        return out

    # --- I/O helpers ---------------------------------------------------------------------------
    async def _db(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        assert self._pool is not None
        pool = self._pool

        def degraded(attempt: int, exc: BaseException, delay: float) -> None:
            self.degraded = f"database: {type(exc).__name__}"
            log.warning(
                "notify: database unavailable (%s), retry %d in %.1fs", type(exc).__name__, attempt, delay
            )

        result = await retry_async(fn, pool, *args, retry_on=DB_TRANSIENT, cap_s=10.0, on_retry=degraded)
        self.degraded = None
        return result

    async def _record(self, attempt: store.Attempt) -> None:
        await self._db(store.record, attempt)

    async def _send_dlq(self, letter: DeadLetter) -> None:
        assert self._producer is not None
        producer = self._producer
        await retry_async(
            producer.send_and_wait,
            self.settings.topic_dlq,
            codec.encode_dead_letter(letter),
            retry_on=KAFKA_TRANSIENT,
            cap_s=10.0,
        )

    async def _dead_letter(self, job: Job, reason: str, detail: str) -> None:
        await self._send_dlq(DeadLetter(reason, f"notify:{job.key}", job.alert.raw, detail))

    # --- reporting -----------------------------------------------------------------------------
    def _update_gauges(self) -> None:
        for cid, w in self.workers.items():
            BACKLOG.labels(cid).set(w.backlog)
            CIRCUIT_OPEN.labels(cid).set(0 if w.breaker.state == "closed" else 1)

    def stats(self) -> dict[str, dict[str, Any]]:
        """Per channel (by display name, secrets masked): counts and circuit state."""
        out: dict[str, dict[str, Any]] = {}
        for w in self.workers.values():
            s = w.stats
            out[w.channel.name] = {
                "position": w.channel.position,
                "delivered": s.delivered,
                "failed": s.failed,
                "parked": w.parked,
                "dead": s.dead,
                "backlog": w.backlog,
                "circuit": w.breaker.state,
                "last_error": s.last_error,
            }
        return out

    def health(self) -> dict[str, Any]:
        return {
            "status": "degraded" if self.degraded else "ok",
            "component": "notify",
            "degraded": self.degraded,
            "consumed": self.consumed,
            "ignored": self.ignored,
            "malformed": self.malformed,
            "channels": self.stats(),
        }


def idempotency_key_for(alert: Alert, channel: Channel) -> str:
    """The key of the episode event `alert` is or enriches, on `channel` (a follow-up's parent)."""
    return f"{alert.event_key}@{channel.id}"
