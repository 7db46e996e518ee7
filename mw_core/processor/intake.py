"""The processor's intake: take a batch from the consumer and decode it, partition by partition.

Contract:
- `fetch_batch` returns up to ``max_records`` records (waiting at most ``timeout_ms`` for the
  first ones), taken from the consumer in slices of `FETCH_SLICE` with a yield to the event loop
  between slices. Unpacking records is CPU work that does not yield; in slices, the writer task's
  pending PostgreSQL round trip is answered between two slices instead of after the whole batch.
  Records of a partition stay in offset order.
- `decode_partition` decodes one partition's records into `Tick`s, index for index with the
  records they came from (for their Kafka timestamps); bad records become dead letters (reason,
  raw payload) and are left out of both lists. The common case, every record good, is one
  comprehension.
"""

from __future__ import annotations

import asyncio

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import ConsumerRecord

from mw_core.markets import codec
from mw_core.models import DeadLetter, Tick

__all__ = ["FETCH_SLICE", "Batch", "decode_partition", "fetch_batch"]

#: Records taken from the consumer per `getmany` call while a batch is filled.
FETCH_SLICE = 8192

Batch = dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]


async def fetch_batch(consumer: AIOKafkaConsumer, *, max_records: int, timeout_ms: int) -> Batch:
    """Up to `max_records` records, in slices (see the module contract)."""
    batch: Batch = await consumer.getmany(timeout_ms=timeout_ms, max_records=min(max_records, FETCH_SLICE))
    total = sum(len(r) for r in batch.values())
    while batch and total < max_records:
        await asyncio.sleep(0)
        more: Batch = await consumer.getmany(timeout_ms=0, max_records=min(max_records - total, FETCH_SLICE))
        if not more:
            break
        for tp, records in more.items():
            have = batch.get(tp)
            if have is None:
                batch[tp] = records
            else:
                have.extend(records)
            total += len(records)
    return batch


def decode_partition(
    records: list[ConsumerRecord[bytes, bytes]],
    *,
    topic: str,
    now_ms: int,
    max_price: float,
    dead: list[DeadLetter],
) -> tuple[list[Tick], list[ConsumerRecord[bytes, bytes]]]:
    """The good ticks of one partition's records and, index for index, their records."""
    decode = codec.decode_tick
    try:
        return [decode(rec.key, rec.value, now_ms, max_price) for rec in records], records
    except codec.BadMessage:
        pass
    ticks: list[Tick] = []
    kept: list[ConsumerRecord[bytes, bytes]] = []
    for rec in records:
        try:
            ticks.append(decode(rec.key, rec.value, now_ms, max_price))
        except codec.BadMessage as exc:
            dead.append(DeadLetter(exc.reason, topic, rec.value or b"", exc.detail))
            continue
        kept.append(rec)
    return ticks, kept
