"""The streaming processor: `prices` topic -> windows + anomaly detection -> PostgreSQL -> alerts.

Contract (at-least-once with idempotent writes):
1. Fetch a batch from the consumer group (`settings.consumer_group`, manual commits).
2. Decode + validate each record; bad ones become dead letters (reason, raw payload).
3. Symbols seen for the first time (start-up, rebalance) are rehydrated from PostgreSQL: the ticks
   of the last `max(windows_s)` seconds before the batch's first tick, and the cooldown state from
   `anomalies`. One query for all cold symbols of the batch.
4. Per tick: admission, O(1) amortized window update and detection by THE analysis path,
   `mw_core.markets.analysis.Analyzer`, which the Dagster batch path and `mw backtest` run too.
5. Ticks, the latest metrics per symbol and the anomalies go to PostgreSQL in ONE transaction
   (COPY, then one statement for ticks + metrics; a replayed batch is written again with
   ON CONFLICT; `mw_core.processor.sinks`). While PostgreSQL is down the write is retried with
   backoff and offsets are not committed; `/healthz` reports `degraded`.
6. Dead letters go to `dlq`; episode events (`mw_core.markets.episodes`: open / escalate / close)
   whose `published_at` is NULL in `alert_events` (the outbox) go to `alerts` and are then marked
   published. Outbox rows a previous owner left unmarked (it died
   between the send and the mark) are first looked up in `alerts`: found ones are only marked, so
   a crash never publishes an alert twice (effectively once; see `mw_core.processor.outbox`).
7. Only then are the batch's offsets committed. A crash anywhere replays at most the uncommitted
   batch; `ON CONFLICT` keys absorb the replay, and rehydration rebuilds identical window state.
   Offsets of records fetched before the latest revocation are never committed: the batch is
   still written (idempotently), but its offsets belong to the previous assignment, and after a
   restart of a memory-only broker even to a previous broker; committing them into the new group
   would move its position past records nobody has read. On assignment, a committed offset of this
   member's own that points into another log (`mw_core.adapters.commits`) makes it read the
   partition from the beginning.

Speed (one event loop, two stages): the loop decodes and analyses batch N+1 while the writer task
waits on PostgreSQL for batch N. The loop takes a batch from the consumer in slices and yields
between analysis slices, so the writer's round trips are answered within ~10 ms instead of after
a whole batch; a revocation waits until the batch in hand is analysed and handed over (`_busy`).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.structs import ConsumerRecord
from prometheus_client import Counter, Gauge

from mw_core.adapters import bus
from mw_core.adapters.commits import CommitGuard, batch_stamps
from mw_core.adapters.postgres.pool import create_pool, ping
from mw_core.adapters.postgres.prices import MetricRow
from mw_core.adapters.postgres.schema import apply_schema
from mw_core.config import Settings
from mw_core.markets import codec
from mw_core.markets.analysis import Analysis, Analyzer
from mw_core.markets.episodes import EpisodeEvent, EpisodePolicy
from mw_core.markets.window_math import metric_rows
from mw_core.models import Anomaly, DeadLetter, Tick
from mw_core.processor.hydration import rehydrate
from mw_core.processor.intake import Batch, decode_partition, fetch_batch
from mw_core.processor.outbox import Outbox
from mw_core.processor.sinks import ProcessorStats, Sinks

log = logging.getLogger(__name__)

TICKS_IN = Counter("mw_processor_ticks_in_total", "Records consumed from the prices topic")
TICKS_STORED = Counter("mw_processor_ticks_stored_total", "Valid ticks written to PostgreSQL")
ANOMALIES = Counter("mw_processor_anomalies_total", "Anomalies detected")
#: Ticks analysed between two yields to the event loop (~10 ms of CPU): the writer of the previous
#: batch, waiting on PostgreSQL, resumes within that time instead of after the whole batch.
ANALYSIS_SLICE = 4096

LAG = Gauge("mw_processor_consumer_lag", "Records behind the high watermark", ["partition"])


@dataclass
class _Prepared:
    """A batch analysed in memory, waiting to be made durable."""

    ticks: list[Tick]
    metrics: list[MetricRow]
    anomalies: list[Anomaly]
    dead: list[DeadLetter]
    events: list[EpisodeEvent]
    outbox_symbols: list[str]
    anomaly_times: dict[tuple[str, int], int]  # (symbol, ts) of a detection -> its Kafka timestamp
    offsets: dict[TopicPartition, int]
    stamps: dict[TopicPartition, int]  # Kafka timestamp of each partition's last record
    epoch: int  # `Processor._epoch` when the records were fetched


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, proc: Processor) -> None:
        self.proc = proc

    async def on_partitions_revoked(self, revoked: Sequence[TopicPartition]) -> None:
        # Commit what was processed before the partitions move: the new owner starts from there.
        # With the writer task: if it died, the run loop re-raises its error instead of waiting.
        async with self.proc._busy:
            await self.proc._drain(self.proc._writer_task)
            self.proc._drop_partitions({tp.partition for tp in revoked})
            self.proc._epoch += 1
            self.proc._guard.forget(revoked)

    async def on_partitions_assigned(self, assigned: Sequence[TopicPartition]) -> None:
        log.info("assigned partitions %s", sorted(tp.partition for tp in assigned))
        await self.proc._check_positions(assigned)


def tune_gc() -> None:
    """GC settings for a long-lived processor process (called by `mw process`, not on import).

    The hot path allocates several small container objects per tick (ticks, window statistics),
    which with CPython's default thresholds triggers a young-generation collection every 700
    allocations and full collections that traverse every long-lived object (window buffers, the
    code base). Freezing what exists after start-up and raising the thresholds cuts that overhead
    (measured: 71k -> 91k ticks/s on 1,000,000 ticks) without turning the collector off.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


class Processor:
    """One member of the processor consumer group."""

    def __init__(
        self, settings: Settings, *, database_url: str | None = None, record_latencies: bool = False
    ) -> None:
        self.settings = settings
        url = database_url or (settings.database_url.get_secret_value() if settings.database_url else None)
        if url is None:
            raise ValueError("MW_DATABASE_URL is not set and no embedded database was started")
        self._db_url = url
        self.episodes = EpisodePolicy.from_settings(settings)
        self.analyzer = Analyzer.from_settings(settings, sink=self.episodes)
        # The partition each symbol in `analyzer` came from: its state is dropped when that moves away.
        self.partition_of: dict[str, int] = {}
        self.stats = ProcessorStats()
        self._record_latencies = record_latencies
        self._stopping = asyncio.Event()
        self._pool: asyncpg.Pool | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self.sinks = Sinks(settings, self.stats, self._stopping)
        self._queue: asyncio.Queue[_Prepared | None] | None = None
        # Held while a batch is analysed and handed over: `prepare_batch` yields to the event loop
        # (so the writer's round trips go on meanwhile), and a revocation waits for the lock, so
        # it never drops window state in the middle of a batch.
        self._busy = asyncio.Lock()
        self._writer_task: asyncio.Task[None] | None = None
        # Revocations so far: a batch fetched in an earlier epoch is written but not committed.
        self._epoch = 0
        # Commits that outlive the broker (`mw_core.adapters.commits`).
        self._guard = CommitGuard(settings)
        self.outbox = Outbox(
            settings,
            db=self.sinks.with_db_retry,
            send=self.sinks.send_all,
            latencies_ms=self.stats.alert_latencies_ms if record_latencies else None,
        )
        self._max_window_s = max(settings.windows_s)

    # --- lifecycle -----------------------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        s = self.stats
        counts = {
            name: getattr(s, name) for name in ("consumed", "stored", "dead_letters", "anomalies", "alerts")
        }
        return {
            "status": "degraded" if s.degraded else "ok",
            "component": "processor",
            "degraded": s.degraded,
            **counts,
            "symbols": len(self.partition_of),
            "last_commit_age_s": None
            if s.last_commit_at is None
            else round(time.time() - s.last_commit_at, 3),
        }

    async def start(self) -> None:
        """Health-check dependencies (DB `SELECT 1`, Kafka metadata), create topics, connect."""
        self._pool = await create_pool(self._db_url, min_size=1, max_size=4)
        await ping(self._pool)
        await apply_schema(self._pool)
        await bus.ensure_topics(self.settings)
        self._producer = bus.producer(self.settings, linger_ms=0)
        await self._producer.start()
        self.sinks.pool, self.sinks.producer = self._pool, self._producer
        self._consumer = bus.consumer(self.settings, group_id=self.settings.consumer_group)
        self._consumer.subscribe([self.settings.topic_prices], listener=_Rebalance(self))
        await self._consumer.start()
        log.info(
            "processor started: group=%s topic=%s windows=%s cooldown=%ss",
            self.settings.consumer_group,
            self.settings.topic_prices,
            self.settings.windows_s,
            self.settings.cooldown_s,
        )

    async def close(self) -> None:
        for client in (self._consumer, self._producer):
            if client is not None:
                with contextlib.suppress(Exception):
                    await client.stop()
        if self._pool is not None:
            await self._pool.close()
        self._consumer = self._producer = self._pool = None
        self.sinks.pool = self.sinks.producer = None

    def stop(self) -> None:
        """Ask the run loop to finish the current batch (write + commit) and return."""
        self._stopping.set()

    async def run(self, *, idle_exit_s: float | None = None) -> ProcessorStats:
        """Process until `stop()`; with `idle_exit_s`, also return after that long without records.

        Two stages overlap: while the writer task makes batch N durable (DB, DLQ, alerts, commit),
        the loop already decodes and analyses batch N+1. The writer handles batches strictly in
        order, so offsets are still committed only after their data is durable.
        """
        if self._consumer is None:
            await self.start()
        assert self._consumer is not None
        self._queue = asyncio.Queue(maxsize=1)
        writer = asyncio.create_task(self._writer(self._queue), name="processor-writer")
        self._writer_task = writer
        idle_since = time.monotonic()
        try:
            while not self._stopping.is_set():
                epoch = self._epoch
                batch = await fetch_batch(
                    self._consumer,
                    max_records=self.settings.batch_max_records,
                    timeout_ms=self.settings.batch_timeout_ms,
                )
                if writer.done():
                    break
                if not batch:
                    if idle_exit_s is not None and time.monotonic() - idle_since >= idle_exit_s:
                        await self._drain(writer)
                        if self._queue.empty():
                            break
                    continue
                async with self._busy:
                    if self._guard.rewound_to and not self._guard.skip_until_rewound(batch):
                        continue
                    prepared = await self.prepare_batch(batch, epoch=epoch)
                    await self._hand_over(prepared, writer)
                idle_since = time.monotonic()
            if not writer.done():
                await self._queue.put(None)
            await writer  # re-raises a writer failure
        finally:
            if not writer.done():
                writer.cancel()
                with contextlib.suppress(BaseException):
                    await writer
            self._queue = self._writer_task = None
            await self.close()
        return self.stats

    async def _hand_over(self, prepared: _Prepared, writer: asyncio.Task[None]) -> None:
        assert self._queue is not None
        put = asyncio.ensure_future(self._queue.put(prepared))
        await asyncio.wait({put, writer}, return_when=asyncio.FIRST_COMPLETED)
        if not put.done():
            put.cancel()
            await writer  # raises the writer's error

    async def _drain(self, writer: asyncio.Task[None] | None = None) -> None:
        """Wait until every handed-over batch is durable and committed."""
        if self._queue is None:
            return
        join = asyncio.ensure_future(self._queue.join())
        waiters: set[asyncio.Future[Any]] = {join}
        if writer is not None:
            waiters.add(writer)
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        if not join.done():
            join.cancel()

    async def _writer(self, queue: asyncio.Queue[_Prepared | None]) -> None:
        while True:
            item = await queue.get()
            try:
                if item is None:
                    return
                await self.finish_batch(item)
            finally:
                queue.task_done()

    # --- the batch ------------------------------------------------------------------------------
    def _drop_partitions(self, partitions: set[int]) -> None:
        """Forget window state of symbols whose partition moved away (rehydrated if it comes back)."""
        gone = [s for s, p in self.partition_of.items() if p in partitions]
        for symbol in gone:
            del self.partition_of[symbol]
        self.analyzer.drop(gone)
        self.episodes.drop(gone)
        if gone:
            dropped = set(gone)
            self.outbox.forget(dropped)
            log.info(
                "dropped window state of %d symbols (partitions %s revoked)", len(gone), sorted(partitions)
            )

    async def _hydrate(self, cold: dict[str, tuple[int, int]]) -> None:
        """Rebuild the state of symbols not yet in memory: symbol -> (first ts, partition)."""
        assert self._pool is not None
        orphans = await rehydrate(
            self._pool,
            self.sinks.with_db_retry,
            self.analyzer,
            self.episodes,
            {s: ts for s, (ts, _) in cold.items()},
            settings=self.settings,
        )
        self.outbox.suspect(orphans)
        self.partition_of.update({s: p for s, (_, p) in cold.items()})

    async def process_batch(self, batch: Batch) -> None:
        """Analyse one batch and make it durable (both stages, sequentially)."""
        await self.finish_batch(await self.prepare_batch(batch))

    async def prepare_batch(self, batch: Batch, *, epoch: int | None = None) -> _Prepared:
        """Decode, validate, rehydrate cold symbols, update windows, detect: no writes."""
        now_ms = int(time.time() * 1000)
        max_price = self.settings.max_price
        # Per partition: the decoded ticks and, index for index, their records (Kafka timestamps).
        decoded: list[tuple[list[Tick], list[ConsumerRecord[bytes, bytes]]]] = []
        dead: list[DeadLetter] = []
        cold: dict[str, tuple[int, int]] = {}
        part_of = self.partition_of
        topic = self.settings.topic_prices
        for tp, records in batch.items():
            partition = tp.partition
            part_ticks, part_records = decode_partition(
                records, topic=topic, now_ms=now_ms, max_price=max_price, dead=dead
            )
            decoded.append((part_ticks, part_records))
            await asyncio.sleep(0)  # let the writer's pending round trip continue
            # Partition bookkeeping per distinct symbol, not per tick.
            moved = [s for s in {t[0] for t in part_ticks} if part_of.get(s) != partition and s not in cold]
            if moved:
                first_ts = {t[0]: t[1] for t in reversed(part_ticks)}  # earliest tick per symbol
                for symbol in moved:
                    if symbol in part_of:
                        part_of[symbol] = partition  # moved between partitions of ours
                    else:
                        cold[symbol] = (first_ts[symbol], partition)
        self.stats.consumed += sum(len(r) for r in batch.values())
        TICKS_IN.inc(sum(len(r) for r in batch.values()))
        if cold:
            await self._hydrate(cold)

        # The one analysis path (`mw_core.markets.analysis`), partition by partition so that each
        # anomaly finds its tick's Kafka timestamp (tick -> alert latency).
        res = Analysis()
        anomaly_times: dict[tuple[str, int], int] = {}
        run = self.analyzer.run
        step = ANALYSIS_SLICE
        for part_ticks, part_records in decoded:
            for k in range(0, len(part_ticks), step):
                first = len(res.anomaly_index)
                run(part_ticks[k : k + step], res)
                for a, j in zip(res.anomalies[first:], res.anomaly_index[first:], strict=True):
                    anomaly_times[(a.symbol, a.ts)] = part_records[k + j].timestamp
                await asyncio.sleep(0)  # let the writer's pending round trip continue
        self.stats.duplicates += res.duplicates
        self.stats.late_stored += res.late_stored
        dead.extend(DeadLetter(r.reason, topic, codec.encode_tick(r.tick)[1], r.detail) for r in res.rejected)
        anomalies = res.anomalies
        events = self.episodes.take()

        metrics: list[MetricRow] = []
        for symbol, (ts, stats) in res.last_stats().items():
            metrics.extend(metric_rows(symbol, ts, stats))

        offsets = {tp: records[-1].offset + 1 for tp, records in batch.items() if records}
        stamps = batch_stamps(batch)
        return _Prepared(
            res.stored,
            metrics,
            anomalies,
            dead,
            events,
            sorted({e.symbol for e in events} | set(cold)),
            anomaly_times,
            offsets,
            stamps,
            self._epoch if epoch is None else epoch,
        )

    async def finish_batch(self, b: _Prepared) -> None:
        """Make a prepared batch durable, publish its dead letters and alerts, then commit."""
        await self.sinks.write(b.ticks, b.metrics, b.anomalies, b.events)
        if b.dead:
            await self.sinks.dead_letters(b.dead)
        if b.outbox_symbols:
            assert self._pool is not None
            self.stats.alerts += await self.outbox.publish(self._pool, b.outbox_symbols, b.anomaly_times)
        if b.epoch == self._epoch:
            self._guard.note(b.offsets, b.stamps)
            await self._commit(b.offsets)
        else:
            log.info(
                "not committing offsets %s: fetched before a rebalance (the partitions' owner re-reads "
                "from the committed offset)",
                {tp.partition: off for tp, off in b.offsets.items()},
            )
        self.stats.batches += 1
        self.stats.stored += len(b.ticks)
        self.stats.anomalies += len(b.anomalies)
        TICKS_STORED.inc(len(b.ticks))
        ANOMALIES.inc(len(b.anomalies))
        assert self._consumer is not None
        # Only partitions still assigned: `highwater` asserts it, and a batch fetched before a
        # revocation is finished after it (an AssertionError here would kill the writer).
        assigned = self._consumer.assignment()
        for tp, offset in b.offsets.items():
            if tp not in assigned:
                continue
            hw = self._consumer.highwater(tp)
            if hw is not None:
                LAG.labels(str(tp.partition)).set(max(0, hw - offset))

    async def _check_positions(self, assigned: Sequence[TopicPartition]) -> None:
        """Read from the beginning the partitions whose committed offset points into another log.

        See `mw_core.adapters.commits`: a commit retried while the member was reset can land in a
        restarted memory-only broker. The fetcher already reads from the committed offsets
        meanwhile: no batch is analysed until the check is done (`_busy`), and what was fetched
        from a rewound partition is dropped.
        """
        if self._consumer is not None and self._guard.knows(assigned):
            async with self._busy:
                await self._guard.check(self._consumer, assigned)

    async def _commit(self, offsets: dict[TopicPartition, int]) -> None:
        assert self._consumer is not None
        if await self._guard.commit(self._consumer, offsets):
            self.stats.last_commit_at = time.time()
