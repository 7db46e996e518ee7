"""Chaos: the memory-only broker is killed mid-stream and a new one starts on the same port.

**The embedded broker keeps everything in memory.** Without ``MW_KAFKA_BOOTSTRAP``, Market Watch
starts a Tansu broker with in-memory storage: when it stops (crash, `mw down`, reboot), its topics,
the records in them and the processor's committed offsets are gone, and a broker started again on
the same port begins empty, every partition at offset 0. What survives is what is durable
elsewhere: ticks the processor already wrote to PostgreSQL, and ticks the ingest still holds
because the old broker never acknowledged them (its bounded buffer and the producer's in-flight
batches, re-sent to the new broker). What is lost, by design, is the window of ticks the old
broker had acknowledged but the processor had not yet made durable: normally a fraction of a
second of data (the consumer lag), unbounded only if the processor was far behind. Use a real
Kafka cluster (``MW_KAFKA_BOOTSTRAP``) where that window matters. This scenario runs the real
``mw ingest`` and ``mw process`` as subprocesses against a local Binance-protocol replay of a
recorded day (3 symbols), SIGKILLs the broker mid-stream, starts a new one on the same port a
few seconds later, and checks that: both services stay up and recover without a restart; the
ingest kept the ticks received meanwhile in its bounded buffer and re-sent them; the topics are
re-created with their configured partitions; the processor re-joins the new, empty group and
reads the new topics from offset 0 (no stale committed offset skips data); every tick received
after the kill reaches PostgreSQL; the only missing ticks lie in the window between the last
durable tick and the kill and are no more than the old broker had acknowledged but the processor
had not stored; and no tick is stored twice.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from aiokafka.admin import AIOKafkaAdminClient

from mw_core.binance_server import BinanceServer
from mw_core.klines import Kline, read_kline_file
from mw_core.local.broker import EmbeddedBroker
from mw_core.local.ports import free_port

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(150)]

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
SYMBOLS = ("ADAUSDT", "BTCUSDT", "SOLUSDT")
DAY = "2024-08-05"  # the crash day: anomalies, so the processor also publishes alerts
SPEED = 2880.0  # one recorded day (1,440 minutes) in 30 s: 144 ticks/s
KILL_AT = 0.35  # fraction of the stream sent when the broker is killed
OUTAGE_S = 5.0
PARTITIONS = 3


def recorded_day() -> list[Kline]:
    out: list[Kline] = []
    for symbol in SYMBOLS:
        out.extend(read_kline_file(FIXTURES / f"{symbol}-1m-{DAY}.csv").klines)
    return out


class Service:
    """One `mw ingest` / `mw process` child in its own session, logs in files, /healthz polled."""

    def __init__(self, command: str, workdir: Path, env: Mapping[str, str]) -> None:
        self.command = command
        self.port = free_port()
        self.env = {**env, "MW_METRICS_PORT": str(self.port)}
        self.log = workdir / f"{command}.log"
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Service:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "mw_core.cli", self.command],
                env=self.env,
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    async def health(self) -> dict[str, Any] | None:
        """The /healthz body (200 ok or 503 degraded), or None while nothing answers."""
        try:
            async with httpx.AsyncClient(timeout=2.0) as client:
                resp = await client.get(f"http://127.0.0.1:{self.port}/healthz")
        except httpx.HTTPError:
            return None
        return resp.json()  # type: ignore[no-any-return]

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM (the graceful production path), SIGKILL if it does not exit in time."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        return self.proc.returncode

    def tail(self, lines: int = 40) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


async def wait_for(
    check: Callable[[], Awaitable[Any]], *, timeout: float, what: str, interval: float = 0.1
) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        await asyncio.sleep(interval)


async def stored(conn: asyncpg.Connection) -> set[tuple[str, int]]:
    rows = await conn.fetch("SELECT symbol, (extract(epoch FROM ts) * 1000)::int8 AS ts FROM prices")
    return {(r["symbol"], int(r["ts"])) for r in rows}


async def topics(bootstrap: str) -> dict[str, int]:
    """Topic -> partition count, from the broker's metadata."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
    await admin.start()
    try:
        described = await admin.describe_topics()
    finally:
        await admin.close()
    return {t["topic"]: len(t["partitions"]) for t in described if not t.get("error_code")}


async def test_broker_restart_mid_stream_loses_only_the_unconsumed_window(
    db_url: str, tmp_path: Path, chaos_record: Callable[..., None]
) -> None:
    data = recorded_day()
    everything = {(k.symbol, k.close_time) for k in data}
    broker_port = free_port()
    broker = EmbeddedBroker(tmp_path / "broker-1", port=broker_port)
    await asyncio.to_thread(broker.start)
    server = BinanceServer(data, speed=SPEED, ping_interval=None)
    await server.start()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MW_")}
    env.update(
        MW_DATABASE_URL=db_url,
        MW_KAFKA_BOOTSTRAP=broker.bootstrap,
        MW_STATE_DIR=str(tmp_path / "state"),
        MW_SYMBOLS=",".join(SYMBOLS),
        MW_BINANCE_WS_URL=server.base_url,
        MW_BINANCE_REST_URL=server.rest_url,
        MW_PRICES_PARTITIONS=str(PARTITIONS),
        MW_BATCH_TIMEOUT_MS="50",
        MW_RSS_FEEDS="none",
        MW_LLM_PROVIDER="template",
        MW_LOG_LEVEL="INFO",
        PYTHONUNBUFFERED="1",
    )
    processor = Service("process", tmp_path, env).start()
    ingest: Service | None = None
    broker2: EmbeddedBroker | None = None
    conn: asyncpg.Connection | None = None
    try:
        await wait_for(processor.health, timeout=30, what="the processor's /healthz")
        ingest = Service("ingest", tmp_path, env).start()
        conn = await asyncpg.connect(db_url)

        # --- mid-stream: snapshot what is durable, then kill the broker ---------------------------
        kill_frame = int(KILL_AT * server.total_frames)
        await wait_for(
            lambda: asyncio.sleep(0, server.position >= kill_frame),
            timeout=40,
            what=f"{kill_frame} frames sent",
        )
        durable_before = await stored(conn)
        newest_durable = {s: max((t for sym, t in durable_before if sym == s), default=0) for s in SYMBOLS}
        os.killpg(broker.proc.pid, signal.SIGKILL)  # type: ignore[union-attr]
        await asyncio.to_thread(broker.proc.wait)  # type: ignore[union-attr]
        cursor_at_kill = server.position  # frames from here on were sent after the kill
        newest_sent_at_kill, _ = server.frame_at(cursor_at_kill - 1)

        # --- outage: the ingest keeps what it receives; nothing is acknowledged any more ----------
        await asyncio.sleep(1.0)
        during = await ingest.health()
        assert during is not None
        acked_by_old = int(during["ticks_out"])
        consumed_from_old = int((await processor.health() or {})["consumed"])
        await asyncio.sleep(OUTAGE_S - 1.0)
        during = await ingest.health()
        assert during is not None
        assert int(during["ticks_out"]) == acked_by_old, "acknowledged by a dead broker?"
        buffered = int(during["ticks_in"]) - acked_by_old
        assert buffered > 0 and during["queue_size"] > 0
        assert during["status"] == "degraded", during
        assert processor.alive() and ingest.alive()

        # --- a new, empty broker on the same port ------------------------------------------------
        broker2 = EmbeddedBroker(tmp_path / "broker-2", port=broker_port)
        await asyncio.to_thread(broker2.start)
        restarted_at = time.monotonic()

        await asyncio.wait_for(server.wait_done(), 60)

        async def settled() -> bool:
            st = await ingest.health()
            if not st or st["queue_size"] or st["ticks_in"] + st["duplicates"] < server.frames_sent:
                return False
            missing = everything - await stored(conn)
            return all(newest_durable[s] < t <= newest_sent_at_kill.close_time for s, t in missing)

        await wait_for(settled, timeout=40, what="every tick sent after the kill to be stored")
        recovered_s = time.monotonic() - restarted_at
        await asyncio.sleep(1.0)  # a last batch in flight must not change the verdict

        final_ingest = await ingest.health()
        final_processor = await processor.health()
        assert processor.alive() and ingest.alive(), "a service died instead of recovering"
        assert final_ingest is not None and final_processor is not None
        assert final_processor["status"] == "ok", final_processor
        assert final_ingest["status"] == "ok", final_ingest

        # Topics were re-created on the new broker with their configured partitions.
        assert (await topics(broker2.bootstrap)).get("prices") == PARTITIONS

        rows = await conn.fetchrow("SELECT count(*) AS n, count(DISTINCT (symbol, ts)) AS d FROM prices")
        assert rows["n"] == rows["d"], "duplicate ticks"
        have = await stored(conn)
        assert durable_before <= have
        missing = everything - have
        # Lost by design: acknowledged by the old broker but not yet durable when it died ...
        unconsumed_at_kill = acked_by_old - len(durable_before)
        assert len(missing) <= unconsumed_at_kill
        # ... and only ticks between the newest durable tick and the kill.
        outside = {(s, t) for s, t in missing if not newest_durable[s] < t <= newest_sent_at_kill.close_time}
        assert not outside, f"lost outside the window: {sorted(outside)[:10]}"
        after_kill = {
            (k.symbol, k.close_time + shift)
            for k, shift in map(server.frame_at, range(cursor_at_kill, server.total_frames))
        }
        assert after_kill <= have
        chaos_record(
            frames=server.total_frames,
            stored=len(have),
            lost=len(missing),
            lost_window_max=unconsumed_at_kill,
            acked_by_old_broker=acked_by_old,
            durable_at_kill=len(durable_before),
            consumed_from_old=consumed_from_old,
            buffered_during_outage=buffered,
            queue_high_water=final_ingest["queue_high_water"],
            send_retries=final_ingest["send_retries"],
            recovered_s=round(recovered_s, 1),
        )
    except BaseException:
        for svc in (processor, ingest):
            if svc is not None:
                sys.stderr.write(f"--- {svc.command} log ---\n{svc.tail()}\n")
        raise
    finally:
        if conn is not None:
            await conn.close()
        rc_ingest = ingest.stop() if ingest is not None else None
        rc_processor = processor.stop()
        await server.stop()
        if broker2 is not None:
            broker2.stop()
        broker.stop()
    assert rc_ingest == 0 and rc_processor == 0
