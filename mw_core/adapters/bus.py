"""Kafka adapter around aiokafka: client factories, topic creation, health check.

Contract:
- `producer(settings)` / `consumer(settings, ...)` build (unstarted) aiokafka clients with the
  security options of `Settings` (PLAINTEXT / SSL / SASL). Producers use ``acks="all"`` and retry
  internally; callers await `send_and_wait` or the futures of a batch before treating data as sent.
- `ensure_topics(settings)` creates the four topics when missing (prices with
  `settings.prices_partitions` partitions) and is safe to call concurrently.
- `with_producer(settings, fn)` runs ``fn(producer)`` with a started producer (topics ensured
  first) and stops it afterwards, so no producer outlives a batch run's event loop.
- Known quirks of the embedded Tansu broker: `end_offsets` is wrong and the admin client's
  `list_consumer_group_offsets` fails; use `consumer.committed()` for offsets.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError

from mw_core.config import Settings

log = logging.getLogger(__name__)

T = TypeVar("T")


def client_options(settings: Settings) -> dict[str, Any]:
    """Connection options shared by producers, consumers and the admin client."""
    if settings.kafka_bootstrap is None:
        raise ValueError("MW_KAFKA_BOOTSTRAP is not set and no embedded broker was started")
    opts: dict[str, Any] = {
        "bootstrap_servers": settings.kafka_bootstrap,
        "security_protocol": settings.kafka_security_protocol,
    }
    if settings.kafka_security_protocol in ("SSL", "SASL_SSL"):
        from aiokafka.helpers import create_ssl_context

        opts["ssl_context"] = create_ssl_context()
    if settings.kafka_security_protocol.startswith("SASL"):
        opts["sasl_mechanism"] = settings.kafka_sasl_mechanism
        opts["sasl_plain_username"] = settings.kafka_sasl_username
        opts["sasl_plain_password"] = (
            settings.kafka_sasl_password.get_secret_value() if settings.kafka_sasl_password else None
        )
    return opts


def producer(settings: Settings, **overrides: Any) -> AIOKafkaProducer:
    opts: dict[str, Any] = {
        "acks": "all",
        "linger_ms": 5,
        "max_batch_size": 256 * 1024,
        "request_timeout_ms": 30_000,
        "retry_backoff_ms": 200,
        "compression_type": None,
    }
    opts.update(overrides)
    return AIOKafkaProducer(**client_options(settings), **opts)


def consumer(settings: Settings, *topics: str, group_id: str | None, **overrides: Any) -> AIOKafkaConsumer:
    opts: dict[str, Any] = {
        "group_id": group_id,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "max_poll_records": settings.batch_max_records,
        "fetch_max_bytes": 32 * 1024 * 1024,
        "max_partition_fetch_bytes": 8 * 1024 * 1024,
        # Short enough that a dead member's partitions move within seconds (chaos tests, restarts),
        # at Kafka's minimum allowed session timeout.
        "session_timeout_ms": 6_000,
        "heartbeat_interval_ms": 500,
        "rebalance_timeout_ms": 5_000,
        # Low fetch wait: the broker answers as soon as data exists or after 20 ms (latency).
        "fetch_max_wait_ms": 20,
    }
    opts.update(overrides)
    return AIOKafkaConsumer(*topics, **client_options(settings), **opts)


def topic_specs(settings: Settings) -> dict[str, int]:
    """Topic name -> partitions."""
    return {
        settings.topic_prices: settings.prices_partitions,
        settings.topic_news: 1,
        settings.topic_alerts: 1,
        settings.topic_dlq: 1,
    }


async def ensure_topics(settings: Settings, *, timeout: float = 30.0) -> list[str]:
    """Create missing topics; return the names created."""
    admin = AIOKafkaAdminClient(**client_options(settings), request_timeout_ms=int(timeout * 1000))
    await admin.start()
    created: list[str] = []
    try:
        existing = set(await admin.list_topics())
        wanted = [
            NewTopic(name=name, num_partitions=parts, replication_factor=1)
            for name, parts in topic_specs(settings).items()
            if name not in existing
        ]
        for topic in wanted:
            try:
                await admin.create_topics([topic])
                created.append(topic.name)
            except TopicAlreadyExistsError:
                pass
    finally:
        await admin.close()
    if created:
        log.info("created Kafka topics %s", created)
    return created


async def with_producer(settings: Settings, fn: Callable[[AIOKafkaProducer], Awaitable[T]]) -> T:
    """Run ``fn(producer)`` with a started producer (topics ensured first), then stop it."""
    await ensure_topics(settings)
    kafka_producer = producer(settings)
    await kafka_producer.start()
    try:
        return await fn(kafka_producer)
    finally:
        await kafka_producer.stop()


async def ping(settings: Settings, *, timeout: float = 5.0) -> list[str]:
    """Kafka metadata health check: return the topic list or raise."""
    admin = AIOKafkaAdminClient(**client_options(settings), request_timeout_ms=int(timeout * 1000))
    try:
        await asyncio.wait_for(admin.start(), timeout)
        return sorted(await asyncio.wait_for(admin.list_topics(), timeout))
    finally:
        await admin.close()


__all__ = [
    "KafkaError",
    "client_options",
    "consumer",
    "ensure_topics",
    "ping",
    "producer",
    "topic_specs",
    "with_producer",
]
