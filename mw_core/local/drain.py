"""Has a consumer group caught up? Committed offsets against high watermarks, read the way Tansu answers right.

Contract:
- `group_lag(settings, group)` returns, for every partition of the group's topics, how many
  records the group has not committed yet: the partition's high watermark minus the group's
  committed offset (0 when it never committed).
- The high watermark comes from a fetch response (exact on the embedded Tansu broker, whose
  ``ListOffsets`` / `end_offsets` answer is wrong), the committed offset from `consumer.committed()`
  (Tansu's admin ``list_consumer_group_offsets`` fails).
- The probe consumer uses the group's id with MANUAL assignment: it never joins the group (no
  rebalance of its members), never commits, and fetches at most a few KiB per partition.
- `lag_of(settings, groups)` sums that over groups; raises `KafkaError` / `OSError` /
  `TimeoutError` when the broker does not answer (the caller retries).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, TopicPartition

from mw_core.adapters import bus
from mw_core.config import Settings


@dataclass(frozen=True, slots=True)
class ConsumerGroup:
    """A consumer group that must catch up before the broker restarts, and what it reads."""

    group_id: str
    topics: tuple[str, ...]


async def _high_watermarks(
    consumer: AIOKafkaConsumer, starts: dict[TopicPartition, int], timeout: float
) -> dict[TopicPartition, int]:
    """Fetch once from `starts` and read each partition's high watermark off the response."""
    consumer.assign(list(starts))
    for tp, offset in starts.items():
        consumer.seek(tp, offset)
    deadline = time.monotonic() + timeout
    while True:
        await consumer.getmany(timeout_ms=100, max_records=1)
        marks = {tp: consumer.highwater(tp) for tp in starts}
        if all(hw is not None for hw in marks.values()):
            return {tp: int(hw) for tp, hw in marks.items() if hw is not None}
        if time.monotonic() > deadline:
            raise TimeoutError(f"no high watermark for {[tp for tp, hw in marks.items() if hw is None]}")


async def group_lag(
    settings: Settings, group: ConsumerGroup, *, timeout: float = 10.0
) -> dict[TopicPartition, int]:
    """Records the group has not committed, per partition of its topics (see module docstring)."""
    consumer = bus.consumer(
        settings,
        group_id=group.group_id,
        fetch_max_bytes=256 * 1024,
        max_partition_fetch_bytes=4 * 1024,
        fetch_max_wait_ms=10,
        request_timeout_ms=int(timeout * 1000) + 1000,
    )
    await asyncio.wait_for(consumer.start(), timeout)
    try:
        await consumer.topics()  # refresh metadata
        tps = [
            TopicPartition(topic, p)
            for topic in group.topics
            for p in sorted(consumer.partitions_for_topic(topic) or ())
        ]
        if not tps:
            return {}
        committed = {tp: await asyncio.wait_for(consumer.committed(tp), timeout) or 0 for tp in tps}
        marks = await _high_watermarks(consumer, committed, timeout)
        return {tp: max(0, marks[tp] - committed[tp]) for tp in tps}
    finally:
        await consumer.stop()


async def lag_of(settings: Settings, groups: Sequence[ConsumerGroup]) -> int:
    """Total uncommitted records over `groups` (0: every group committed everything)."""
    total = 0
    for group in groups:
        total += sum((await group_lag(settings, group)).values())
    return total
