"""Test helpers: kline fixtures as ticks, tick inserts, the real stream, tiny RSS documents, real Dagster
processes."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import os
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import orjson
from aiokafka import AIOKafkaConsumer

from mw_core.adapters import bus
from mw_core.adapters.postgres.prices import write_batch
from mw_core.config import Settings
from mw_core.local.pg_urls import sqlalchemy_url, with_database
from mw_core.local.runtime import create_database
from mw_core.markets import codec
from mw_core.models import Tick
from mw_core.processor.service import Processor
from mw_dagster.resources import PostgresResource

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures"
BIN = Path(os.environ.get("VIRTUAL_ENV", ROOT / ".venv")) / "bin"


def kline_ticks(symbol: str, day: str = "2024-08-05") -> list[Tick]:
    """A Binance 1-minute kline CSV as ticks: ts = close time (ms), price = close."""
    with (FIXTURES / f"{symbol}-1m-{day}.csv").open(newline="") as fh:
        return [
            Tick(
                symbol,
                int(row["close_time_ms"]),
                float(row["close"]),
                open=float(row["open"]),
                high=float(row["high"]),
                low=float(row["low"]),
                base_volume=float(row["volume"]),
                quote_volume=float(row["quote_volume"]),
                source="replay",
            )
            for row in csv.DictReader(fh)
        ]


def insert_ticks(postgres: PostgresResource, ticks: Sequence[Tick]) -> None:
    postgres.run(lambda pool: write_batch(pool, ticks))


async def stream(settings: Settings, ticks: Sequence[Tick]) -> None:
    """The real streaming path: ticks -> Kafka `prices` -> Processor -> PostgreSQL."""
    await bus.ensure_topics(settings)
    producer = bus.producer(settings)
    await producer.start()
    try:
        for tick in ticks:
            key, value = codec.encode_tick(tick)
            await producer.send(settings.topic_prices, value, key=key)
        await producer.flush()
    finally:
        await producer.stop()
    await Processor(settings).run(idle_exit_s=2.0)


def rss(*items: tuple[str, str]) -> bytes:
    now = datetime.now(tz=UTC).strftime("%a, %d %b %Y %H:%M:%S +0000")
    body = "".join(
        f"<item><title>{title}</title><link>https://news.example/{guid}</link><guid>https://news.example/{guid}</guid>"
        f"<pubDate>{now}</pubDate><description>Bitcoin BTC news &lt;b&gt;bold&lt;/b&gt;</description></item>"
        for guid, title in items
    )
    return f'<?xml version="1.0"?><rss version="2.0"><channel><title>t</title>{body}</channel></rss>'.encode()


# --- real Dagster processes (daemon / webserver) on a fresh Dagster database ----------------------


@contextlib.contextmanager
def fresh_database(server_url: str) -> Iterator[str]:
    """A new, empty database for Dagster's own storage; yields its (asyncpg-style) URL, then drops it."""
    name = f"dagster_{uuid.uuid4().hex[:10]}"
    asyncio.run(create_database(server_url, name))
    try:
        yield with_database(server_url, name)
    finally:
        asyncio.run(_drop_database(server_url, name))


async def _drop_database(server_url: str, name: str) -> None:
    conn = await asyncpg.connect(server_url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


def dagster_env(home: Path, dagster_pg_url: str, **mw: str) -> dict[str, str]:
    """A child environment: ours minus MW_* / DAGSTER_*, plus DAGSTER_HOME, the storage URL and `mw`.

    `dagster_pg_url` is an asyncpg-style ``postgresql://`` URL; dagster.yaml wants the psycopg2
    SQLAlchemy driver named explicitly.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MW_", "DAGSTER_"))}
    env.update(
        DAGSTER_HOME=str(home),
        DAGSTER_PG_URL=sqlalchemy_url(dagster_pg_url),
        PYTHONUNBUFFERED="1",
        **mw,
    )
    return env


def make_dagster_home(path: Path) -> Path:
    """A DAGSTER_HOME with the repository's dagster.yaml."""
    path.mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "dagster.yaml", path / "dagster.yaml")
    return path


def stop_group(proc: subprocess.Popen[bytes], *, grace_s: float = 15.0) -> None:
    """SIGTERM the process group (daemon/webserver spawn code servers and run workers), then SIGKILL."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace_s)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # stragglers of the group (grpc servers, run workers)
    proc.wait(timeout=5)


async def consume_topic(
    settings: Settings, topic: str, *, expect: int, timeout: float = 10.0
) -> list[dict[str, object]]:
    """Read `topic` from the beginning (fresh group) until `expect` JSON records or `timeout`."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=f"t-{uuid.uuid4().hex[:6]}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    out: list[dict[str, object]] = []
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and len(out) < expect:
            for records in (await consumer.getmany(timeout_ms=300)).values():
                out.extend(orjson.loads(r.value) for r in records)
    finally:
        await consumer.stop()
    return out
