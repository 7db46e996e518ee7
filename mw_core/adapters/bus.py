"""Kafka adapter around aiokafka: client factories, topic creation, health check.

Contract:
- `producer(settings)` / `consumer(settings, ...)` build (unstarted) aiokafka clients with the
  security options of `Settings` (PLAINTEXT / SSL / SASL; with SSL a CA bundle and, for mutual TLS,
  a client certificate + key, optionally password-protected). Producers use ``acks="all"`` and
  retry internally; with ``MW_KAFKA_REPLICATION_FACTOR`` above 1 they are also idempotent (a retried
  batch is not written twice; the embedded Tansu broker does not implement idempotent producers,
  hence off at 1). Callers await `send_and_wait` or the futures of a batch before treating data
  as sent.
- `ensure_topics(settings)` creates the four topics when missing (prices with
  `settings.prices_partitions` partitions, every topic with ``kafka_replication_factor`` replicas
  and, above 1, ``min.insync.replicas = min(2, RF-1)``) and is safe to call concurrently.
  aiokafka's `create_topics` returns per-topic error codes instead of raising: each one is checked.
  TOPIC_ALREADY_EXISTS is success (a concurrent creator won); a retriable code raises its
  `KafkaError` (transient); any other (INVALID_REPLICATION_FACTOR, POLICY_VIOLATION, topic or
  cluster authorization, ...) raises `TopicSetupError` naming each topic and error, which is not a
  `KafkaError`, so start-up fails at once instead of retrying. A replication factor above the
  number of brokers the cluster reports fails the same way before any request is sent.
- `with_producer(settings, fn)` runs ``fn(producer)`` with a started producer (topics ensured
  first) and stops it afterwards, so no producer outlives a batch run's event loop.
- Known quirks of the embedded Tansu broker: `end_offsets` is wrong and the admin client's
  `list_consumer_group_offsets` fails; use `consumer.committed()` for offsets. It accepts any
  replication factor and reports TOPIC_ALREADY_EXISTS as its only CreateTopics error.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError, for_code

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
        opts["ssl_context"] = ssl_context(settings)
    elif _ssl_files(settings):
        # Certificates with a plaintext protocol would silently not be used: say so instead.
        raise ValueError(
            f"MW_KAFKA_SSL_* files are set but MW_KAFKA_SECURITY_PROTOCOL={settings.kafka_security_protocol}; "
            "use SSL or SASL_SSL"
        )
    if settings.kafka_security_protocol.startswith("SASL"):
        opts["sasl_mechanism"] = settings.kafka_sasl_mechanism
        opts["sasl_plain_username"] = settings.kafka_sasl_username
        opts["sasl_plain_password"] = (
            settings.kafka_sasl_password.get_secret_value() if settings.kafka_sasl_password else None
        )
    return opts


def _ssl_files(settings: Settings) -> list[Path]:
    files = (settings.kafka_ssl_cafile, settings.kafka_ssl_certfile, settings.kafka_ssl_keyfile)
    return [f for f in files if f is not None]


def ssl_context(settings: Settings) -> ssl.SSLContext:
    """The client TLS context: CA bundle (else system CAs), client certificate chain for mutual TLS.

    Hostnames are always checked (aiokafka's helper). A missing or unreadable file, a key that does
    not match the certificate or a wrong key password raises `ValueError` here, at start-up: not at
    the first handshake, and not as an `OSError` a retry policy would take for a network error.
    """
    from aiokafka.helpers import create_ssl_context

    if settings.kafka_ssl_keyfile is not None and settings.kafka_ssl_certfile is None:
        raise ValueError("MW_KAFKA_SSL_KEYFILE is set without MW_KAFKA_SSL_CERTFILE")
    missing = [str(f) for f in _ssl_files(settings) if not f.is_file()]
    if missing:
        raise ValueError(f"Kafka TLS file(s) not found: {', '.join(missing)}")
    password = settings.kafka_ssl_password.get_secret_value() if settings.kafka_ssl_password else None
    try:
        context: ssl.SSLContext = create_ssl_context(
            cafile=settings.kafka_ssl_cafile,
            certfile=settings.kafka_ssl_certfile,
            keyfile=settings.kafka_ssl_keyfile,
            password=password,
        )
    except OSError as exc:  # ssl.SSLError is an OSError: not a network error, never transient
        raise ValueError(f"Kafka TLS files unusable ({type(exc).__name__}): {exc}") from exc
    return context


def producer(settings: Settings, **overrides: Any) -> AIOKafkaProducer:
    replicated = settings.kafka_replication_factor > 1
    opts: dict[str, Any] = {
        # acks=all: with one replica the leader's write; with more, every in-sync replica's (and
        # min.insync.replicas on the topics makes "in sync" mean at least two copies).
        "acks": "all",
        "enable_idempotence": replicated,
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


def min_insync_replicas(replication_factor: int) -> int:
    """Copies a write needs before acks=all succeeds: 2 on a cluster (RF 3 survives one broker down)."""
    return max(1, min(2, replication_factor - 1))


def topic_specs(settings: Settings) -> dict[str, int]:
    """Topic name -> partitions."""
    return {
        settings.topic_prices: settings.prices_partitions,
        settings.topic_news: 1,
        settings.topic_alerts: 1,
        settings.topic_dlq: 1,
    }


class TopicSetupError(RuntimeError):
    """Topics cannot be created as configured; waiting does not help (not a `KafkaError`)."""

    def __init__(self, errors: dict[str, str]) -> None:
        self.errors = dict(errors)  # topic -> "ERROR_NAME: detail"
        super().__init__(
            "Kafka refused to create topic(s): "
            + "; ".join(f"{topic!r}: {error}" for topic, error in sorted(self.errors.items()))
        )


def check_create_topics_response(topic_errors: Iterable[tuple[Any, ...]]) -> None:
    """Raise for the per-topic errors of a CreateTopics response (``(topic, code[, message])`` rows).

    TOPIC_ALREADY_EXISTS is success. The first retriable error is raised as its `KafkaError`
    (transient: the caller's retry policy applies); all other errors together as `TopicSetupError`.
    """
    fatal: dict[str, str] = {}
    for row in topic_errors:
        topic, code = str(row[0]), int(row[1])
        message = row[2] if len(row) > 2 and row[2] else None
        if code == 0:
            continue
        error = for_code(code)
        if error is TopicAlreadyExistsError:
            continue
        if error.retriable:
            raise error(f"creating topic {topic!r}: {message or error.description}")
        fatal[topic] = f"{error.message}: {message or error.description}"
    if fatal:
        raise TopicSetupError(fatal)


async def ensure_topics(settings: Settings, *, timeout: float = 30.0) -> list[str]:
    """Create missing topics; return the names created. See the module docstring for errors."""
    admin = AIOKafkaAdminClient(**client_options(settings), request_timeout_ms=int(timeout * 1000))
    await admin.start()
    created: list[str] = []
    replicas = settings.kafka_replication_factor
    try:
        existing = set(await admin.list_topics())
        missing = {name: parts for name, parts in topic_specs(settings).items() if name not in existing}
        if missing:
            brokers = len((await admin.describe_cluster())["brokers"])
            if replicas > brokers:
                raise TopicSetupError(
                    dict.fromkeys(
                        missing,
                        f"INVALID_REPLICATION_FACTOR: MW_KAFKA_REPLICATION_FACTOR={replicas} but the "
                        f"cluster has {brokers} broker(s)",
                    )
                )
        configs = {"min.insync.replicas": str(min_insync_replicas(replicas))} if replicas > 1 else {}
        for name, parts in missing.items():
            topic = NewTopic(
                name=name, num_partitions=parts, replication_factor=replicas, topic_configs=configs
            )
            response = await admin.create_topics([topic])
            check_create_topics_response(response.topic_errors)
            if all(int(row[1]) == 0 for row in response.topic_errors):
                created.append(name)
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
    "TopicSetupError",
    "check_create_topics_response",
    "client_options",
    "consumer",
    "ensure_topics",
    "min_insync_replicas",
    "ping",
    "producer",
    "ssl_context",
    "topic_specs",
    "with_producer",
]
