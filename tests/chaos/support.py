"""Chaos-suite helpers: real `mw process` subprocesses, a fast producer, topic readers, DB reads.

Contract:
- `ProcessorProcess` runs ``python -m mw_core.cli process`` in its own session (process group),
  configured only through ``MW_*`` environment variables, in its own working directory (so no
  stray ``.env`` is read). Output goes to files that the tests scan afterwards. `kill()` signals
  the whole process group; `stop()` is the graceful SIGTERM path with a SIGKILL fallback.
- The `alerts` topic carries episode events (`codec.encode_event`); `event_key` is their identity
  ``(episode_id, seq)``, at most once on the topic. `stored_events` reads the outbox
  (`alert_events`) with the same body the processor publishes, so a run's topic and its database
  compare field for field, and two runs compare with each other.
- `read_topic` reads every partition of a topic up to the high watermark reported by the fetch
  responses (Tansu's `end_offsets` is wrong for multi-record batches, the fetch high watermark is
  right), so it needs no expected count.
- Nothing here patches code: faults are real signals, real server stops, real bad bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson
from aiokafka import TopicPartition

from mw_core.adapters import bus
from mw_core.adapters.postgres.episodes import events_between, unpublished_events
from mw_core.adapters.postgres.pool import create_pool
from mw_core.adapters.postgres.schema import apply_schema
from mw_core.config import Settings
from mw_core.local.ports import free_port
from mw_core.markets import codec
from mw_core.markets.analysis import Analyzer
from mw_core.markets.episodes import EpisodeEvent, EpisodePolicy
from mw_core.models import Tick

T0 = 1_722_816_000_000  # 2024-08-05 00:00 UTC
_YEAR_3000_MS = 32_503_680_000_000

_ASSIGNED = re.compile(r"assigned partitions \[([\d, ]*)\]")


def processor_env(settings: Settings, **extra: str) -> dict[str, str]:
    """Environment for a `mw process` child: the parent's, minus its MW_*, plus these settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MW_")}
    assert settings.database_url is not None and settings.kafka_bootstrap is not None
    env.update(
        {
            "MW_DATABASE_URL": settings.database_url.get_secret_value(),
            "MW_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
            "MW_TOPIC_PRICES": settings.topic_prices,
            "MW_TOPIC_ALERTS": settings.topic_alerts,
            "MW_TOPIC_DLQ": settings.topic_dlq,
            "MW_TOPIC_NEWS": settings.topic_news,
            "MW_CONSUMER_GROUP": settings.consumer_group,
            "MW_PRICES_PARTITIONS": str(settings.prices_partitions),
            "MW_BATCH_MAX_RECORDS": str(settings.batch_max_records),
            "MW_BATCH_TIMEOUT_MS": str(settings.batch_timeout_ms),
            "MW_STATE_DIR": str(settings.state_dir),
            "MW_EPISODES_ENABLED": str(settings.episodes_enabled).lower(),
            "MW_EPISODE_ESCALATION_STEP": str(settings.episode_escalation_step),
            "MW_EPISODE_QUIET_S": str(settings.episode_quiet_s),
            "MW_LLM_PROVIDER": "template",
            "MW_LOG_LEVEL": "INFO",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(extra)
    return env


def spawn_mw(
    command: str, *, env: Mapping[str, str], cwd: Path, stdout: Any, stderr: Any
) -> subprocess.Popen[bytes]:
    """`mw <command>` as a child in its own session, so a signal to its group reaches all of it."""
    argv = [sys.executable, "-m", "mw_core.cli", command]
    return subprocess.Popen(
        argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr, start_new_session=True
    )


def stop_group(proc: subprocess.Popen[bytes], timeout: float) -> int:
    """Graceful stop of a `spawn_mw` child: SIGTERM to its group (the production path), SIGKILL
    if it does not exit within `timeout`. Returns its exit code."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    return int(proc.returncode)


class ProcessorProcess:
    """One `mw process` child process (its own session, so signals reach all of it)."""

    def __init__(
        self, settings: Settings, workdir: Path, *, name: str = "processor", env: Mapping[str, str] = {}
    ) -> None:
        self.name = name
        self.workdir = workdir
        self.port = free_port()
        self.env = processor_env(settings, MW_METRICS_PORT=str(self.port), **env)
        self.stdout_path = workdir / f"{name}.out"
        self.stderr_path = workdir / f"{name}.err"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> ProcessorProcess:
        self.workdir.mkdir(parents=True, exist_ok=True)
        with open(self.stdout_path, "ab") as out, open(self.stderr_path, "ab") as err:
            self.proc = spawn_mw("process", env=self.env, cwd=self.workdir, stdout=out, stderr=err)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send `sig` to the child's whole process group; with SIGKILL, reap it."""
        assert self.proc is not None
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)
        if sig == signal.SIGKILL:
            self.proc.wait(timeout=10)

    def stop(self, timeout: float = 20.0) -> int:
        """Graceful stop (SIGTERM, the production path); SIGKILL if it does not exit in time."""
        assert self.proc is not None
        return stop_group(self.proc, timeout)

    def output(self) -> str:
        parts = []
        for path in (self.stdout_path, self.stderr_path):
            if path.exists():
                parts.append(path.read_text(errors="replace"))
        return "\n".join(parts)

    def assigned_partitions(self) -> list[int] | None:
        """The partitions of the latest `assigned partitions [...]` log line, if any."""
        found = (
            _ASSIGNED.findall(self.stderr_path.read_text(errors="replace"))
            if self.stderr_path.exists()
            else []
        )
        if not found:
            return None
        return [int(p) for p in found[-1].split(",") if p.strip()]

    async def health(self) -> tuple[int, dict[str, Any]] | None:
        """(HTTP status, /healthz JSON), or None while nothing answers."""
        try:
            async with httpx.AsyncClient(timeout=2.0) as client:
                resp = await client.get(f"http://127.0.0.1:{self.port}/healthz")
        except httpx.HTTPError:
            return None
        return resp.status_code, resp.json()

    async def metrics_text(self) -> str:
        async with httpx.AsyncClient(timeout=2.0) as client:
            resp = await client.get(f"http://127.0.0.1:{self.port}/metrics")
        return resp.text

    def __repr__(self) -> str:
        return f"<{self.name} pid={self.proc.pid if self.proc else None}>"


async def wait_for(
    check: Callable[[], Awaitable[Any]], *, timeout: float, interval: float = 0.05, what: str = "condition"
) -> Any:
    """Poll `check` until it returns something truthy; return it, or fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        await asyncio.sleep(interval)


async def produce_ticks(
    settings: Settings,
    ticks: Iterable[Tick],
    raw: Iterable[tuple[bytes | None, bytes | None]] = (),
) -> dict[str, int]:
    """Produce ticks (codec format), then raw (key, value) records, to `prices`.

    Returns:
        symbol -> the partition its ticks went to (the default partitioner hashes the key).
    """
    await bus.ensure_topics(settings)
    producer = bus.producer(settings, linger_ms=20)
    await producer.start()
    futures: dict[str, asyncio.Future[Any]] = {}
    try:
        for tick in ticks:
            key, value = codec.encode_tick(tick)
            futures[tick.symbol] = await producer.send(settings.topic_prices, value, key=key)
        for raw_key, raw_value in raw:
            await producer.send(settings.topic_prices, raw_value, key=raw_key)
        await producer.flush()
        return {symbol: (await fut).partition for symbol, fut in futures.items()}
    finally:
        await producer.stop()


async def produce_records(settings: Settings, records: Iterable[tuple[bytes | None, bytes | None]]) -> None:
    """Produce raw (key, value) records to `prices` in the given order."""
    await produce_ticks(settings, (), records)


async def read_topic(settings: Settings, topic: str, *, timeout: float = 30.0) -> list[dict[str, Any]]:
    """Every record of `topic` (all partitions), JSON-decoded, up to the current high watermarks."""
    consumer = bus.consumer(settings, group_id=None)
    await consumer.start()
    out: list[dict[str, Any]] = []
    try:
        await consumer.topics()  # metadata for every topic
        parts = consumer.partitions_for_topic(topic)
        assert parts, f"topic {topic} does not exist"
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        deadline = time.monotonic() + timeout
        while True:
            batch = await consumer.getmany(timeout_ms=300)
            for records in batch.values():
                out.extend(orjson.loads(r.value) for r in records)
            done = True
            for tp in tps:
                hw = consumer.highwater(tp)
                if hw is None or await consumer.position(tp) < hw:
                    done = False
            if done and not batch:
                return out
            if time.monotonic() > deadline:
                raise AssertionError(f"could not read {topic} to its end in {timeout:.0f}s")
    finally:
        await consumer.stop()


async def committed_offsets(settings: Settings) -> dict[int, int | None]:
    """The consumer group's committed offsets on `prices` (`committed()`; Tansu's admin API is broken).

    The consumer never subscribes, so it does not join the group and cannot disturb its members.
    """
    consumer = bus.consumer(settings, group_id=settings.consumer_group)
    await consumer.start()
    try:
        return {
            p: await consumer.committed(TopicPartition(settings.topic_prices, p))
            for p in range(settings.prices_partitions)
        }
    finally:
        await consumer.stop()


async def fetch(url: str, sql: str, *args: object) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(url, timeout=10)
    try:
        rows: list[asyncpg.Record] = await conn.fetch(sql, *args)
        return rows
    finally:
        await conn.close()


async def fetchval(url: str, sql: str, *args: object) -> Any:
    conn = await asyncpg.connect(url, timeout=10)
    try:
        return await conn.fetchval(sql, *args)
    finally:
        await conn.close()


async def ensure_schema(url: str) -> None:
    """Create the schema up front, so the test can poll tables before the processor first starts."""
    pool = await create_pool(url, min_size=1, max_size=1)
    try:
        await apply_schema(pool)
    finally:
        await pool.close()


async def with_schema(make_settings: Callable[..., Settings], **options: Any) -> tuple[Settings, str]:
    """`make_settings(**options)` and its database URL, with the schema created (`ensure_schema`)."""
    settings = make_settings(**options)
    assert settings.database_url is not None
    url = settings.database_url.get_secret_value()
    await ensure_schema(url)
    return settings, url


def clean_twin(
    make_settings: Callable[..., Settings], settings: Settings, clean_url: str, **options: Any
) -> Settings:
    """Settings for the undisturbed reference processor of `settings`: the same `options`, but its
    own database (`clean_url`), consumer group and output topics (suffix ``-clean``)."""
    return make_settings(
        **options,
        database_url=clean_url,
        consumer_group=settings.consumer_group + "-clean",
        topic_alerts=settings.topic_alerts + "-clean",
        topic_dlq=settings.topic_dlq + "-clean",
    )


async def stored_ticks(url: str) -> list[tuple[str, int, float]]:
    rows = await fetch(
        url, "SELECT symbol, (extract(epoch FROM ts) * 1000)::int8 AS ts_ms, price FROM prices"
    )
    return [(r["symbol"], int(r["ts_ms"]), float(r["price"])) for r in rows]


async def anomaly_keys(url: str) -> list[tuple[str, int, int]]:
    rows = await fetch(
        url, "SELECT symbol, (extract(epoch FROM ts) * 1000)::int8 AS ts_ms, window_s FROM anomalies"
    )
    return [(r["symbol"], int(r["ts_ms"]), int(r["window_s"])) for r in rows]


def event_key(alert: Mapping[str, Any]) -> tuple[str, int]:
    """The identity of an episode event on the `alerts` topic: ``(episode_id, seq)``."""
    return (str(alert["episode_id"]), int(alert["seq"]))


def event_body(alert: Mapping[str, Any]) -> tuple[tuple[str, Any], ...]:
    """Every field of an `alerts` record, hashable: two runs must publish identical events."""
    return tuple(sorted(alert.items()))


async def stored_events(url: str, *, unpublished: bool = False) -> list[dict[str, Any]]:
    """The outbox (`alert_events`; with `unpublished`, only rows not yet marked published), each
    row decoded as the `alerts` record the processor publishes for it."""
    pool = await create_pool(url, min_size=1, max_size=1)
    try:
        if unpublished:
            events = [e for _, e in await unpublished_events(pool, limit=1_000_000)]
        else:
            events = await events_between(pool, start_ms=0, end_ms=_YEAR_3000_MS)
    finally:
        await pool.close()
    return [orjson.loads(codec.encode_event(e)[1]) for e in events]


async def settled(url: str, total: int) -> bool:
    """`total` ticks stored and the outbox empty (every episode event marked published)."""
    rows = await fetch(
        url,
        "SELECT (SELECT count(*) FROM prices) AS n,"
        " (SELECT count(*) FROM alert_events WHERE published_at IS NULL) AS unpublished",
    )
    return bool(rows[0]["n"] == total and rows[0]["unpublished"] == 0)


def pure_events(settings: Settings, ticks: Iterable[Tick]) -> list[EpisodeEvent]:
    """The episode events of THE analysis path run in memory over `ticks` (no Kafka, no restart)."""
    policy = EpisodePolicy.from_settings(settings)
    Analyzer.from_settings(settings, sink=policy).run(list(ticks))
    return policy.take()
