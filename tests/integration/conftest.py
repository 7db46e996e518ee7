"""Fixtures shared by the integration tests of several rooms."""

from __future__ import annotations

import os
import signal
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import asyncpg
import pytest

from mw_core.adapters.postgres.pool import create_pool
from mw_core.adapters.postgres.schema import apply_schema
from mw_core.local.broker import EmbeddedBroker
from mw_core.local.ports import free_port


@pytest.fixture
async def pool(db_url: str) -> AsyncIterator[asyncpg.Pool]:
    """A pool on a fresh database (`db_url`) with the schema applied."""
    pool = await create_pool(db_url, max_size=4)
    await apply_schema(pool)
    yield pool
    await pool.close()


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[Callable[[str], EmbeddedBroker]]:
    """Start brokers of this test's own, one after the other on the same port (killed in tests)."""
    port = free_port()
    brokers: list[EmbeddedBroker] = []

    def start(name: str) -> EmbeddedBroker:
        broker = EmbeddedBroker(tmp_path / name, port=port)
        broker.start()
        brokers.append(broker)
        return broker

    yield start
    for broker in brokers:
        broker.stop()


def kill_broker(broker: EmbeddedBroker) -> None:
    """SIGKILL: a crash, everything in the memory-only broker is gone."""
    assert broker.proc is not None
    os.killpg(broker.proc.pid, signal.SIGKILL)
    broker.proc.wait()
