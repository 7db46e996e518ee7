"""Committed offsets a consumer can vouch for: is the broker's log still the one it read?

Why: aiokafka retries a commit that failed with a retriable error (coordinator gone, topic
unknown) inside `commit()`, each time with the member's *current* generation. When the
memory-only broker restarts, the member is reset (generation -1) while such a commit is still
retrying, and a group that has no members yet (the new broker's) accepts a generation -1 commit:
offsets of the OLD broker's log land in the new one. After the rejoin the group would start
there and skip every record the new broker holds below them. (On a real Kafka cluster the same
commit is harmless: it names a position in the same log.)

Contract:
- `CommitGuard` is what a consuming service (processor, notifier) uses: `note` before each
  commit, `commit` (a failure is one warning and False), `await check(consumer, assigned)` in its `on_partitions_assigned` (rewinds stale
  partitions to the beginning and logs a warning), `skip_until_rewound(batch)` on every batch
  fetched while a rewind is pending (drops records fetched from the old position; False when
  nothing is left), `forget(revoked)` in its `on_partitions_revoked`.
- `CommitMarks.note(offsets, stamps)` remembers, per partition, the Kafka timestamp of the record
  before each offset this member asked to commit (the last `KEEP` per partition).
- `CommitMarks.stale(settings, committed)` takes the group's committed offsets of newly
  assigned partitions and returns those whose offset is one of this member's but whose log no
  longer holds the record it read at offset-1: another timestamp there, or the offset lies past
  the log's end. The caller reads those partitions from the beginning. Offsets this member never
  committed are trusted (another member's), and so is an offset that cannot be checked within
  `CHECK_TIMEOUT_S` (the broker is slow, not necessarily new).
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError, OffsetOutOfRangeError
from aiokafka.structs import ConsumerRecord

from mw_core.adapters import bus
from mw_core.config import Settings

__all__ = ["CHECK_TIMEOUT_S", "KEEP", "CommitGuard", "CommitMarks", "batch_stamps"]

log = logging.getLogger(__name__)

#: Commits remembered per partition (a stale commit is one of the last few batches').
KEEP = 16
#: The longest the check of one rebalance may take.
CHECK_TIMEOUT_S = 5.0


class CommitMarks:
    """The timestamps behind this member's recent commits (see the module contract)."""

    def __init__(self) -> None:
        self._marks: dict[TopicPartition, OrderedDict[int, int]] = {}

    def __contains__(self, tp: object) -> bool:
        return tp in self._marks

    def note(self, offsets: dict[TopicPartition, int], stamps: dict[TopicPartition, int]) -> None:
        """Before a commit: offset -> Kafka timestamp of the record at offset - 1, per partition."""
        for tp, offset in offsets.items():
            marks = self._marks.setdefault(tp, OrderedDict())
            marks[offset] = stamps[tp]
            marks.move_to_end(offset)
            while len(marks) > KEEP:
                marks.popitem(last=False)

    def ours(self, committed: dict[TopicPartition, int | None]) -> dict[TopicPartition, tuple[int, int]]:
        """The committed offsets this member asked for: tp -> (offset, timestamp at offset - 1)."""
        out: dict[TopicPartition, tuple[int, int]] = {}
        for tp, offset in committed.items():
            marks = self._marks.get(tp)
            stamp = None if offset is None or marks is None else marks.get(offset)
            if offset is not None and stamp is not None:
                out[tp] = (offset, stamp)
        return out

    async def stale(
        self, settings: Settings, committed: dict[TopicPartition, int | None]
    ) -> set[TopicPartition]:
        """Partitions whose committed offset is ours but points into another log."""
        ours = self.ours(committed)
        if not ours:
            return set()
        try:
            return await asyncio.wait_for(_read_back(settings, ours), CHECK_TIMEOUT_S)
        except (KafkaError, OSError, TimeoutError) as exc:
            log.warning(
                "could not check committed offsets %s against the log (%s: %s); trusting them",
                {tp.partition: off for tp, (off, _) in ours.items()},
                type(exc).__name__,
                exc,
            )
            return set()


async def _read_back(settings: Settings, ours: dict[TopicPartition, tuple[int, int]]) -> set[TopicPartition]:
    """Read the record before each committed offset; the partitions where it is not ours."""
    stale: set[TopicPartition] = set()
    reader = bus.consumer(settings, group_id=None, auto_offset_reset="none")
    await reader.start()
    try:
        for tp, (offset, stamp) in ours.items():
            reader.assign([tp])
            reader.seek(tp, offset - 1)
            records: list[ConsumerRecord[bytes, bytes]] = []
            try:
                while not records:
                    records = (await reader.getmany(tp, timeout_ms=200, max_records=1)).get(tp, [])
                    end = reader.highwater(tp)
                    if not records and end is not None and end < offset:
                        break  # our log held `offset` records: this one is shorter
            except OffsetOutOfRangeError:
                pass  # likewise (a broker that reports it)
            if not records:
                stale.add(tp)
                continue
            if records[0].offset != offset - 1 or records[0].timestamp != stamp:
                stale.add(tp)
    finally:
        await reader.stop()
    return stale


def batch_stamps(
    batch: Mapping[TopicPartition, Sequence[ConsumerRecord[bytes, bytes]]],
) -> dict[TopicPartition, int]:
    """Kafka timestamp of each partition's last record in a fetched batch."""
    return {tp: records[-1].timestamp for tp, records in batch.items() if records}


class CommitGuard:
    """`CommitMarks` plus the rewinds they call for (see the module contract)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.marks = CommitMarks()
        # Partition -> the offset it was rewound to, until the first batch from there arrives.
        self.rewound_to: dict[TopicPartition, int] = {}

    def note(self, offsets: dict[TopicPartition, int], stamps: dict[TopicPartition, int]) -> None:
        self.marks.note(offsets, stamps)

    async def commit(self, consumer: AIOKafkaConsumer, offsets: dict[TopicPartition, int]) -> bool:
        """Commit; False (and one warning) when it failed, e.g. the group rebalanced meanwhile.

        Nothing is lost then: the partitions' owner re-reads from the last commit, and the
        services' writes absorb the repeat.
        """
        try:
            await consumer.commit(offsets)
        except Exception as exc:
            log.warning(
                "offset commit failed (%s: %s); the batch will be re-read by the partitions' owner",
                type(exc).__name__,
                exc,
            )
            return False
        return True

    def knows(self, assigned: Iterable[TopicPartition]) -> bool:
        return any(tp in self.marks for tp in assigned)

    async def check(
        self, consumer: AIOKafkaConsumer, assigned: Iterable[TopicPartition]
    ) -> list[TopicPartition]:
        """Rewind the assigned partitions whose committed offset points into another log."""
        committed = {tp: await consumer.committed(tp) for tp in assigned if tp in self.marks}
        stale = sorted(await self.marks.stale(self.settings, committed))
        for tp in stale:
            log.warning(
                "the log of %s-%d no longer holds the record before its committed offset %s (the "
                "broker lost its state: a restarted memory-only broker?): reading it from the beginning",
                tp.topic,
                tp.partition,
                committed[tp],
            )
            await consumer.seek_to_beginning(tp)
            self.rewound_to[tp] = await consumer.position(tp)
        return stale

    def skip_until_rewound(self, batch: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]) -> bool:
        """Drop records of rewound partitions fetched before the rewind; False if none are left."""
        for tp in [tp for tp in batch if tp in self.rewound_to]:
            start = self.rewound_to[tp]
            records = batch[tp]
            first = next((i for i, r in enumerate(records) if r.offset == start), None)
            if first is None:
                del batch[tp]  # all fetched from the old position
            else:
                batch[tp] = records[first:]
                del self.rewound_to[tp]
        return bool(batch)

    def forget(self, revoked: Iterable[TopicPartition]) -> None:
        for tp in revoked:
            self.rewound_to.pop(tp, None)
