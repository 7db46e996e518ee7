"""Local receivers and helpers for the notifier's integration tests."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import orjson
import pytest

from mw_core.adapters import bus
from mw_core.config import Settings
from tests.fakes.smtp import SmtpServer
from tests.fakes.webhook import Receiver

WEBHOOK_SECRET = "whsec-SECRET-4242"
JSON_TOKEN = "jsonTOKEN-9f8e7d"


@pytest.fixture
def webhook() -> Iterator[Receiver]:
    r = Receiver(secret=WEBHOOK_SECRET).start()
    yield r
    r.stop()


@pytest.fixture
def json_receiver() -> Iterator[Receiver]:
    r = Receiver().start()
    yield r
    r.stop()


@pytest.fixture
def ntfy_receiver() -> Iterator[Receiver]:
    r = Receiver().start()
    yield r
    r.stop()


@pytest.fixture
def smtp() -> Iterator[SmtpServer]:
    server = SmtpServer().start()
    yield server
    server.stop()


@pytest.fixture
def notify_settings(make_settings: Callable[..., Settings]) -> Callable[..., Settings]:
    """Settings with a uuid notifier group and fast, permissive flow control (tests override)."""

    def factory(**overrides: Any) -> Settings:
        base: dict[str, Any] = {
            "notify_group": f"mw-notify-{uuid.uuid4().hex[:8]}",
            "notify_rate_per_min": 6000.0,
            "notify_burst": 100,
            "notify_circuit_failures": 5,
            "notify_circuit_open_s": 0.5,
            "notify_max_attempts": 50,
        }
        return make_settings(**{**base, **overrides})

    return factory


def episode(seq: int, kind: str, *, symbol: str = "BTCUSDT", ret: float = -0.05, **extra: Any) -> bytes:
    open_ts = 1_722_820_079_999
    body = {
        "type": "episode",
        "kind": kind,
        "episode_id": f"{symbol}-{open_ts}",
        "seq": seq,
        "symbol": symbol,
        "ts": open_ts + (seq - 1) * 60_000,
        "time": "2024-08-05T01:07:59.999000+00:00",
        "window_s": 300,
        "ret": ret,
        "return": ret,
        "direction": "down" if ret < 0 else "up",
        "price": 58000.5,
        "threshold": 0.03,
        "summary": "",
        **extra,
    }
    return orjson.dumps(body)


def enrichment(seq: int, summary: str, *, symbol: str = "BTCUSDT", kind: str = "open") -> bytes:
    return orjson.dumps(
        {
            "type": "enrichment",
            "episode_id": f"{symbol}-1722820079999",
            "seq": seq,
            "symbol": symbol,
            "kind": kind,
            "ts": 1_722_820_079_999,
            "summary": summary,
            "model": "test",
            "is_template": False,
        }
    )


async def produce(settings: Settings, values: list[bytes]) -> None:
    await bus.ensure_topics(settings)
    producer = bus.producer(settings)
    await producer.start()
    try:
        for value in values:
            await producer.send_and_wait(settings.topic_alerts, value, key=b"BTCUSDT")
    finally:
        await producer.stop()


async def until(predicate: Callable[[], bool], *, timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def dlq_values(settings: Settings, *, want: int, timeout: float = 20.0) -> list[dict[str, Any]]:
    consumer = bus.consumer(settings, settings.topic_dlq, group_id=None)
    await consumer.start()
    out: list[dict[str, Any]] = []
    try:
        deadline = time.monotonic() + timeout
        while len(out) < want and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=200)
            out += [orjson.loads(r.value) for part in batch.values() for r in part if r.value]
    finally:
        await consumer.stop()
    return out


@pytest.fixture
async def running() -> AsyncIterator[Callable[[Any], asyncio.Task[None]]]:
    """Start services' `run()` as tasks; stop and await them at the end."""
    started: list[tuple[Any, asyncio.Task[None]]] = []

    def start(service: Any) -> asyncio.Task[None]:
        task = asyncio.create_task(service.run())
        started.append((service, task))
        return task

    yield start
    for service, task in started:
        service.stop()
        await asyncio.wait_for(task, 30)
