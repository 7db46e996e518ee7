"""`IngestService`: Binance websocket -> bounded buffer -> Kafka ``prices`` (and ``dlq``).

Contract:
- Start-up: the websocket client starts at once; the publisher creates the topics
  (`bus.ensure_topics`) and starts the producer, retrying with backoff while Kafka is down.
  While publishing, the topics are checked again every ``topic_check_s`` and re-created when
  missing: a broker that lost them (the memory-only embedded broker, restarted) still accepts
  produce requests, but consumers cannot commit offsets on a topic it does not know.
- Backpressure: the socket reader awaits ``queue.put`` on a bounded `asyncio.Queue`
  (``settings.ingest_buffer_size``); while it waits, websockets stops reading the socket and TCP
  slows the sender. Memory holds at most the queue plus one publish batch.
- At-least-once: every tick taken from the queue is kept until Kafka acknowledged it; failed sends
  are retried with backoff forever (until `stop`). Keys are the symbol (UTF-8), values
  `codec.encode_tick`. aiokafka retries a batch internally for at most ``ack_timeout_s``; after
  that (Kafka down) the publisher drops the producer and reconnects through the start-up path, so
  topics are re-created BEFORE anything is produced again (a restarted memory-only broker would
  otherwise take the records into a topic it does not know, and writes after the topic's creation
  collide with them). `/healthz` reports ``degraded`` while a batch has waited more than
  ``STALLED_AFTER_S`` for its acknowledgement.
- Bad frames become `DeadLetter` records on ``settings.topic_dlq`` (reason, raw payload), are
  logged and counted; ingest continues.
- After every reconnect the REST backfill fills each symbol's gap (`mw_core.ingest.backfill`);
  backfilled ticks pass the same ``(symbol, E)`` de-duplication and are tagged ``rest_backfill``.
  Backfills run beside the live stream, so their ticks may reach Kafka after newer live ticks (the
  processor stores late ``rest_backfill`` ticks).
- `stop()` closes the sockets, cancels running backfills, publishes what is buffered (bounded by
  ``drain_timeout_s``), flushes and stops the producer; anything that could not be published is
  logged with its count, never silently dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import asdict, dataclass
from typing import Any, Literal

from aiokafka import AIOKafkaProducer
from prometheus_client import Counter, Gauge

from mw_core.adapters import bus
from mw_core.adapters.retry import jittered_delay
from mw_core.config import Settings
from mw_core.ingest.backfill import Backfiller, BackfillError
from mw_core.ingest.client import BinanceStreamClient
from mw_core.markets.codec import BadMessage, encode_dead_letter, encode_tick
from mw_core.models import DeadLetter, Tick

log = logging.getLogger(__name__)

TICKS_IN = Counter("mw_ingest_ticks_in_total", "Ticks received from the websocket (after de-duplication)")
TICKS_OUT = Counter("mw_ingest_ticks_out_total", "Ticks acknowledged by Kafka")
DLQ = Counter("mw_ingest_dlq_total", "Bad frames sent to the dead-letter topic", ["reason"])
BACKFILLED = Counter("mw_ingest_backfilled_total", "Ticks recovered by the REST backfill")
BACKFILL_FAILURES = Counter("mw_ingest_backfill_failures_total", "Gaps the REST backfill could not fill")
SEND_RETRIES = Counter("mw_ingest_send_retries_total", "Kafka sends retried after a failure")
QUEUE_SIZE = Gauge("mw_ingest_queue_size", "Records waiting in the ingest buffer")

DLQ_SOURCE_WS = "binance-ws"
DLQ_SOURCE_REST = "binance-rest"
MAX_BATCH = 500
DEGRADED_AFTER_FAILURES = 3
STALLED_AFTER_S = 5.0

RecordKind = Literal["tick", "backfill", "dlq"]


@dataclass(frozen=True, slots=True)
class _Record:
    topic: str
    key: bytes | None
    value: bytes
    kind: RecordKind


@dataclass
class IngestStats:
    ticks_in: int = 0
    ticks_out: int = 0
    dlq: int = 0
    dlq_out: int = 0
    backfilled: int = 0
    backfill_failures: int = 0
    gaps: int = 0
    reconnects: int = 0
    duplicates: int = 0
    send_retries: int = 0
    queue_high_water: int = 0
    unpublished_at_stop: int = 0


class IngestService:
    """The price ingest process (`mw ingest`).

    Args:
        settings: Symbols, URLs, timeouts, topics, buffer size.
        ws_url: Websocket base URL; default ``settings.binance_ws_url``.
        rest_url: REST base URL for the backfill; default ``settings.binance_rest_url``.
    """

    drain_timeout_s = 10.0
    topic_check_s = 5.0
    ack_timeout_s = 3.0

    def __init__(self, settings: Settings, *, ws_url: str | None = None, rest_url: str | None = None) -> None:
        self.settings = settings
        self.ws_url = ws_url or settings.binance_ws_url
        self.rest_url = rest_url or settings.binance_rest_url
        self.client = BinanceStreamClient(
            self.ws_url,
            settings.symbols,
            silence_timeout_s=settings.ws_silence_timeout_s,
            rollover_s=settings.ws_rollover_s,
            max_backoff_s=settings.reconnect_max_backoff_s,
            max_price=settings.max_price,
        )
        self.queue: asyncio.Queue[_Record] = asyncio.Queue(settings.ingest_buffer_size)
        self._batch_size = min(MAX_BATCH, settings.ingest_buffer_size)
        self._stats = IngestStats()
        self._stopping = asyncio.Event()
        self._draining = asyncio.Event()
        self._finished = asyncio.Event()
        self._running = False
        self._kafka_ready = False
        self._unacked_since: float | None = None  # monotonic start of the batch awaiting its acks
        self._last_send_error: BaseException | None = None
        self._backfills: set[asyncio.Task[None]] = set()
        self._backfill_slots = asyncio.Semaphore(2)
        self._backfiller: Backfiller | None = None

    # --- observability ----------------------------------------------------------------------------
    @property
    def stats(self) -> dict[str, Any]:
        """Counters of this instance (a snapshot)."""
        out = asdict(self._stats)
        cs = self.client.stats
        out.update(
            reconnects=cs.reconnects,
            duplicates=cs.duplicates,
            connections=cs.connections,
            rollovers=cs.rollovers,
            consecutive_failures=cs.consecutive_failures,
            reconnect_reasons=dict(cs.reconnect_reasons),
            queue_size=self.queue.qsize(),
            queue_capacity=self.queue.maxsize,
        )
        return out

    def health(self) -> dict[str, Any]:
        """`/healthz` body: ``ok`` while connected to Binance and Kafka, else ``degraded``."""
        cs = self.client.stats
        problems = []
        if not self.client.connected:
            problems.append("websocket not connected" + (f" ({cs.last_error})" if cs.last_error else ""))
        if cs.consecutive_failures >= DEGRADED_AFTER_FAILURES:
            problems.append(f"{cs.consecutive_failures} consecutive connection failures")
        if not self._kafka_ready:
            problems.append("Kafka producer not ready")
        elif self._unacked_since is not None:
            waiting = time.monotonic() - self._unacked_since
            if waiting > STALLED_AFTER_S:
                problems.append(f"Kafka has not acknowledged a batch for {waiting:.0f}s")
        return {
            "status": "ok" if not problems else "degraded",
            "component": "ingest",
            "degraded": "; ".join(problems) or None,
            "ws_url": self.ws_url,
            "last_frame_age_s": None
            if cs.last_frame_at is None
            else round(time.time() - cs.last_frame_at, 3),
            **{k: v for k, v in self.stats.items() if k != "reconnect_reasons"},
        }

    # --- StreamHandler ------------------------------------------------------------------------------
    async def _put(self, record: _Record) -> None:
        await self.queue.put(record)  # blocks when full: backpressure onto the socket
        size = self.queue.qsize()
        if size > self._stats.queue_high_water:
            self._stats.queue_high_water = size
        QUEUE_SIZE.set(size)

    def _tick_record(self, tick: Tick, kind: RecordKind) -> _Record:
        key, value = encode_tick(tick)
        return _Record(self.settings.topic_prices, key, value, kind)

    async def on_tick(self, tick: Tick) -> None:
        self._stats.ticks_in += 1
        TICKS_IN.inc()
        await self._put(self._tick_record(tick, "tick"))

    async def on_bad_frame(self, raw: bytes, error: BadMessage) -> None:
        await self._dead_letter(DeadLetter(error.reason, DLQ_SOURCE_WS, raw, error.detail))

    async def on_gap(self, symbol: str, after_ms: int, before_ms: int) -> None:
        self._stats.gaps += 1
        task = asyncio.create_task(self._backfill(symbol, after_ms, before_ms), name=f"backfill-{symbol}")
        self._backfills.add(task)
        task.add_done_callback(self._backfills.discard)

    async def _dead_letter(self, dl: DeadLetter) -> None:
        self._stats.dlq += 1
        DLQ.labels(reason=dl.reason).inc()
        log.warning("bad %s message -> %s: %s %s", dl.source, self.settings.topic_dlq, dl.reason, dl.detail)
        await self._put(_Record(self.settings.topic_dlq, dl.source.encode(), encode_dead_letter(dl), "dlq"))

    async def _backfill(self, symbol: str, after_ms: int, before_ms: int) -> None:
        if self._backfiller is None:
            return
        async with self._backfill_slots:
            try:
                ticks = await self._backfiller.fill(symbol, after_ms=after_ms, before_ms=before_ms)
            except BackfillError as exc:
                self._stats.backfill_failures += 1
                BACKFILL_FAILURES.inc()
                log.warning(
                    "backfill of %s between E=%d and E=%d failed: %s", symbol, after_ms, before_ms, exc
                )
                return
            except BadMessage as exc:
                self._stats.backfill_failures += 1
                BACKFILL_FAILURES.inc()
                await self._dead_letter(
                    DeadLetter(exc.reason, DLQ_SOURCE_REST, b"", f"{symbol}: {exc.detail}")
                )
                return
        added = 0
        for tick in ticks:
            if self.client.dedup.accept(tick.symbol, tick.ts):
                await self._put(self._tick_record(tick, "backfill"))
                added += 1
        self._stats.backfilled += added
        BACKFILLED.inc(added)
        log.info("backfilled %d ticks of %s between E=%d and E=%d", added, symbol, after_ms, before_ms)

    # --- publishing ----------------------------------------------------------------------------------
    async def _sleep(self, seconds: float, event: asyncio.Event) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), seconds)

    async def _start_producer(self) -> AIOKafkaProducer | None:
        """ensure_topics + producer.start, retried until it works or the service stops."""
        failures = 0
        while not self._draining.is_set():
            producer: AIOKafkaProducer | None = None
            try:
                await bus.ensure_topics(self.settings, timeout=10.0)
                producer = bus.producer(self.settings, request_timeout_ms=int(self.ack_timeout_s * 1000))
                await producer.start()
            except bus.TopicSetupError:
                raise  # misconfiguration (replication factor, policy, ACL): waiting does not help
            except Exception as exc:  # Kafka down: retry, the websocket side applies backpressure
                if producer is not None:
                    with contextlib.suppress(Exception):
                        await producer.stop()
                failures += 1
                delay = jittered_delay(failures + 1, base_s=0.5, cap_s=30.0)
                log.warning(
                    "Kafka unavailable at %s: %s; retrying in %.1fs",
                    self.settings.kafka_bootstrap,
                    exc,
                    delay,
                )
                await self._sleep(delay, self._draining)
                continue
            self._kafka_ready = True
            log.info("ingest publishing to %s (dlq %s)", self.settings.topic_prices, self.settings.topic_dlq)
            return producer
        return None

    async def _keep_topics(self) -> None:
        """Every ``topic_check_s``, re-create topics the broker lost (see the module docstring)."""
        while not self._draining.is_set():
            await self._sleep(self.topic_check_s, self._draining)
            if self._draining.is_set():
                return
            try:
                created = await asyncio.wait_for(bus.ensure_topics(self.settings, timeout=5.0), 10.0)
            except Exception as exc:  # Kafka down: the publisher's retries report it
                log.debug("topic check failed: %s", exc)
                continue
            if created:
                log.warning("re-created Kafka topics %s: the broker had lost them (restarted?)", created)

    async def _next_batch(self) -> list[_Record]:
        """Up to one batch from the queue; empty when draining and the queue is empty."""
        while True:
            if self._draining.is_set() and self.queue.empty():
                return []
            try:
                first = await asyncio.wait_for(self.queue.get(), 0.2)
            except TimeoutError:
                continue
            batch = [first]
            while len(batch) < self._batch_size and not self.queue.empty():
                batch.append(self.queue.get_nowait())
            QUEUE_SIZE.set(self.queue.qsize())
            return batch

    async def _send(self, producer: AIOKafkaProducer, batch: list[_Record]) -> list[_Record]:
        """Send a batch; return the records Kafka did not acknowledge (to be retried)."""
        futures: list[asyncio.Future[Any] | BaseException] = []
        for rec in batch:
            try:
                futures.append(await producer.send(rec.topic, rec.value, key=rec.key))
            except Exception as exc:
                futures.append(exc)
        failed: list[_Record] = []
        for rec, fut in zip(batch, futures, strict=True):
            if isinstance(fut, BaseException):
                failed.append(rec)
                self._last_send_error = fut
                continue
            try:
                await fut
            except Exception as exc:
                failed.append(rec)
                self._last_send_error = exc
                continue
            if rec.kind == "dlq":
                self._stats.dlq_out += 1
            else:
                self._stats.ticks_out += 1
                TICKS_OUT.inc()
        return failed

    async def _publish_loop(self) -> None:
        producer = await self._start_producer()
        if producer is None:
            lost = self.queue.qsize()
            if lost:
                self._stats.unpublished_at_stop += lost
                log.error("ingest stopped with %d records not published: Kafka never became available", lost)
            return
        pending: list[_Record] = []
        failures = 0
        drain_deadline: float | None = None
        loop = asyncio.get_running_loop()
        keeper = asyncio.create_task(self._keep_topics(), name="ingest-topic-check")
        try:
            while True:
                if self._draining.is_set() and drain_deadline is None:
                    drain_deadline = loop.time() + self.drain_timeout_s
                if drain_deadline is not None and loop.time() > drain_deadline:
                    break
                if not pending:
                    pending = await self._next_batch()
                    if not pending:
                        break  # drained
                if self._unacked_since is None:
                    self._unacked_since = time.monotonic()
                try:
                    if drain_deadline is not None:
                        failed = await asyncio.wait_for(
                            self._send(producer, pending), drain_deadline - loop.time()
                        )
                    else:
                        failed = await self._send(producer, pending)
                except TimeoutError:
                    break
                if not failed:
                    pending, failures = [], 0
                    self._unacked_since = None
                    continue
                # Keep the failed records (in order) and retry them: never drop a tick.
                failures += 1
                self._stats.send_retries += len(failed)
                SEND_RETRIES.inc(len(failed))
                delay = jittered_delay(failures + 1, base_s=0.2, cap_s=10.0)
                log.warning(
                    "Kafka send failed for %d records (%r); retrying in %.1fs",
                    len(failed),
                    self._last_send_error,
                    delay,
                )
                pending = failed
                await asyncio.sleep(delay)
                if not self._draining.is_set():
                    # Reconnect through `_start_producer`: topics first, then a fresh producer.
                    self._kafka_ready = False
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(producer.stop(), 10.0)  # nothing left to flush
                    restarted = await self._start_producer()
                    if restarted is None:
                        break  # stopping while Kafka is down: `pending` is reported below
                    producer = restarted
        finally:
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeper
            lost = len(pending) + self.queue.qsize()
            if lost:
                self._stats.unpublished_at_stop += lost
                log.error("ingest stopped with %d records not acknowledged by Kafka", lost)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(producer.stop(), 10.0)  # flushes what was sent
            self._kafka_ready = False
            self._unacked_since = None

    # --- lifecycle --------------------------------------------------------------------------------
    async def run(self) -> None:
        """Run until `stop()`: websocket client + publisher (+ backfills after reconnects)."""
        if self._stopping.is_set():
            return
        self._running = True
        self._finished.clear()
        log.info(
            "ingest: %d symbols from %s (backfill %s) -> %s",
            len(self.settings.symbols),
            self.ws_url,
            self.rest_url,
            self.settings.topic_prices,
        )
        self._backfiller = Backfiller(self.rest_url, max_price=self.settings.max_price)
        client_task = asyncio.create_task(self.client.run(self), name="ingest-ws")
        publisher_task = asyncio.create_task(self._publish_loop(), name="ingest-publisher")
        stop_waiter = asyncio.create_task(self._stopping.wait())
        crashed: BaseException | None = None
        try:
            done, _ = await asyncio.wait(
                {client_task, publisher_task, stop_waiter}, return_when=asyncio.FIRST_COMPLETED
            )
            for task in done - {stop_waiter}:
                if not task.cancelled() and task.exception() is not None:
                    crashed = task.exception()
                    log.error("ingest task %s crashed: %r", task.get_name(), crashed)
        finally:
            stop_waiter.cancel()
            # 1. no new data: close the sockets, cancel backfills
            self.client.stop()
            with contextlib.suppress(Exception):
                await client_task
            for task in list(self._backfills):
                task.cancel()
            for task in list(self._backfills):
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            # 2. publish what is buffered, flush and stop the producer
            self._draining.set()
            with contextlib.suppress(Exception):
                # A send parked in aiokafka's own retries must not hold the stop forever.
                await asyncio.wait_for(publisher_task, self.drain_timeout_s + 15.0)
            await self._backfiller.aclose()
            self._running = False
            self._finished.set()
            log.info("ingest stopped: %s", {k: v for k, v in self.stats.items() if k != "reconnect_reasons"})
        if crashed is not None:
            raise crashed

    async def stop(self) -> None:
        """Stop gracefully: close sockets, publish the buffer, flush the producer; returns when done."""
        self._stopping.set()
        if self._running:
            await self._finished.wait()


__all__ = ["IngestService", "IngestStats"]
