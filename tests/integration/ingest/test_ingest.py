"""Price ingest on real components: the Binance-protocol replay server (with fault injection from
`tests.fakes.binance`), real websocket/HTTP clients, and the embedded Kafka-protocol broker."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from aiokafka import TopicPartition
from websockets.asyncio.client import connect

from mw_core.adapters import bus
from mw_core.config import Settings, load_settings
from mw_core.ingest.backfill import Backfiller, BackfillError
from mw_core.ingest.client import CONSECUTIVE_FAILURES, BinanceStreamClient
from mw_core.ingest.service import IngestService
from mw_core.local.ports import free_port
from mw_core.markets.codec import BadMessage
from mw_core.models import Tick
from mw_core.replay.klines import Kline, read_kline_file
from mw_core.replay.server import BinanceServer
from tests.conftest import FIXTURES
from tests.fakes.binance import GARBAGE_REASONS, FaultyBinanceServer

pytestmark = [pytest.mark.integration, pytest.mark.timeout(30)]

DAY = 1_722_816_000_000  # 2024-08-05 00:00 UTC


def klines(*symbols: str, minutes: int, day: str = "2024-08-05") -> list[Kline]:
    out: list[Kline] = []
    for symbol in symbols:
        out.extend(read_kline_file(FIXTURES / f"{symbol}-1m-{day}.csv").klines[:minutes])
    return out


def keys(rows: Iterable[Kline]) -> set[tuple[str, int]]:
    return {(k.symbol, k.close_time) for k in rows}


async def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    try:
        async with asyncio.timeout(timeout):
            while not predicate():
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"timed out after {timeout}s waiting for {what}") from None


async def consume(
    settings: Settings, topic: str, *, expect: int, timeout: float = 10.0
) -> list[dict[str, Any]]:
    consumer = bus.consumer(settings, group_id=f"t-{uuid.uuid4().hex[:8]}")
    await consumer.start()
    out: list[dict[str, Any]] = []
    try:
        # Explicit assignment: a fresh group has no offsets (-> earliest) and skips the join round.
        await consumer.topics()
        partitions = consumer.partitions_for_topic(topic) or set()
        consumer.assign([TopicPartition(topic, p) for p in sorted(partitions)])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=300)
            for records in batch.values():
                out.extend({"key": r.key, **orjson.loads(r.value)} for r in records)
            if len(out) >= expect and not batch:
                break
    finally:
        await consumer.stop()
    return out


@contextlib.asynccontextmanager
async def running(service: IngestService) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(service.run())
    try:
        yield task
    finally:
        await asyncio.wait_for(service.stop(), 15)
        await asyncio.wait_for(task, 5)


class Collector:
    """A StreamHandler that keeps everything (for client-level tests)."""

    def __init__(self) -> None:
        self.ticks: list[Tick] = []
        self.bad: list[tuple[bytes, BadMessage]] = []
        self.gaps: list[tuple[str, int, int]] = []

    async def on_tick(self, tick: Tick) -> None:
        self.ticks.append(tick)

    async def on_bad_frame(self, raw: bytes, error: BadMessage) -> None:
        self.bad.append((raw, error))

    async def on_gap(self, symbol: str, after_ms: int, before_ms: int) -> None:
        self.gaps.append((symbol, after_ms, before_ms))


# --- the replay server ------------------------------------------------------------------------------


async def test_server_rest_klines_follow_binance_semantics() -> None:
    server = BinanceServer(klines("BTCUSDT", "SOLUSDT", minutes=30))
    async with server, httpx.AsyncClient(base_url=server.rest_url) as http:

        async def get(**params: Any) -> httpx.Response:
            return await http.get("/api/v3/klines", params={"symbol": "BTCUSDT", "interval": "1m", **params})

        page = (await get(startTime=DAY + 1, endTime=DAY + 5 * 60_000, limit=3)).json()
        assert [row[0] for row in page] == [DAY + 60_000, DAY + 120_000, DAY + 180_000]
        assert page[0][6] == DAY + 119_999 and isinstance(page[0][4], str) and len(page[0]) == 12
        assert [r[0] for r in (await get(startTime=DAY + 27 * 60_000)).json()] == [
            DAY + 27 * 60_000,
            DAY + 28 * 60_000,
            DAY + 29 * 60_000,
        ]
        assert [r[0] for r in (await get(endTime=DAY + 60_000, limit=5)).json()] == [DAY, DAY + 60_000]
        assert len((await get()).json()) == 30
        assert (await get(startTime=DAY + 31 * 60_000)).json() == []

        bad = await http.get("/api/v3/klines", params={"symbol": "XXXUSDT", "interval": "1m"})
        assert (bad.status_code, bad.json()["code"]) == (400, -1121)
        assert (await get(interval="5m")).status_code == 400
        assert (await get(limit=5000)).status_code == 400
        assert (await http.get("/api/v3/ping")).json() == {}
        assert "serverTime" in (await http.get("/api/v3/time")).json()
        assert (await http.get("/nope")).status_code == 404


async def test_server_streams_requested_symbols_in_event_order_and_resumes() -> None:
    data = klines("BTCUSDT", "SOLUSDT", "ADAUSDT", minutes=200)
    async with BinanceServer(data, speed=6000) as server:
        url = f"{server.base_url}/stream?streams=btcusdt@miniTicker/solusdt@miniTicker"
        async with connect(url, close_timeout=0.5) as ws:
            frames = [orjson.loads(await ws.recv()) for _ in range(20)]
        assert {f["stream"] for f in frames} == {"btcusdt@miniTicker", "solusdt@miniTicker"}
        assert all(f["data"]["s"].lower() == f["stream"].split("@")[0] for f in frames)
        times = [f["data"]["E"] for f in frames]
        assert times == sorted(times) and times[0] == DAY + 59_999
        assert frames[0]["data"]["c"] == "58185.90000000"

        await asyncio.sleep(0.1)
        paused_at = server.position
        await asyncio.sleep(0.5)
        assert server.position == paused_at < server.total_frames  # nobody listens: the stream waits

        async with connect(f"{server.base_url}/stream?streams=btcusdt@miniTicker", close_timeout=0.5) as ws:
            nxt = orjson.loads(await ws.recv())
            ack_req = {"method": "SUBSCRIBE", "params": ["adausdt@miniTicker"], "id": 7}
            await ws.send(orjson.dumps(ack_req).decode())
            seen = [orjson.loads(await ws.recv()) for _ in range(30)]
        assert times[-1] < nxt["data"]["E"] <= times[-1] + 2 * 60_000  # resumed where the stream left
        assert {"result": None, "id": 7} in seen
        assert any(f.get("stream") == "adausdt@miniTicker" for f in seen)


async def test_loop_mode_keeps_event_time_increasing() -> None:
    data = klines("BTCUSDT", minutes=3)
    async with BinanceServer(data, loop=True) as server:
        async with connect(f"{server.base_url}/stream?streams=btcusdt@miniTicker", close_timeout=0.5) as ws:
            times = [orjson.loads(await ws.recv())["data"]["E"] for _ in range(10)]
        assert server.span_ms == 3 * 60_000
        assert times == [DAY + 59_999 + i * 60_000 for i in range(10)]
        async with httpx.AsyncClient(base_url=server.rest_url) as http:
            rows = (
                await http.get(
                    "/api/v3/klines",
                    params={"symbol": "BTCUSDT", "interval": "1m", "startTime": DAY + 4 * 60_000},
                )
            ).json()
        assert rows[0][0] == DAY + 4 * 60_000 and rows[0][4] == f"{data[1].close:.8f}"


async def test_from_sources_reads_the_bundled_sample() -> None:
    server = BinanceServer.from_sources(["sample"], speed="max")
    assert (server.symbols, server.total_frames, server.bad_rows) == (["BTCUSDT"], 1440, 0)


# --- the websocket client ---------------------------------------------------------------------------


async def test_server_ping_gets_a_pong_from_the_client() -> None:
    async with BinanceServer(klines("BTCUSDT", minutes=5), ping_interval=0.2) as server:
        client = BinanceStreamClient(server.base_url, ["BTCUSDT"], silence_timeout_s=5)
        handler = Collector()
        task = asyncio.create_task(client.run(handler))
        try:
            await wait_until(lambda: len(handler.ticks) == 5, 5, "5 ticks")
            latencies = await server.ping_clients(pong_timeout_s=2)
            assert len(latencies) == 1 and 0 <= latencies[0] < 2
            await asyncio.sleep(1.0)  # several keepalive pings of the server, all answered
            assert client.stats.connections == 1 and client.stats.reconnects == 0
        finally:
            client.stop()
            await asyncio.wait_for(task, 5)


async def test_unreachable_endpoint_logs_one_clear_line_and_retries_until_it_is_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="mw_core.ingest.client")
    port = free_port()
    client = BinanceStreamClient(
        f"ws://127.0.0.1:{port}", ["BTCUSDT"], max_backoff_s=0.2, base_backoff_s=0.05, silence_timeout_s=5
    )
    handler = Collector()
    task = asyncio.create_task(client.run(handler))
    try:
        await wait_until(lambda: client.stats.consecutive_failures >= 3, 5, "3 failed attempts")
        assert not task.done()  # never exits
        lines = [r.getMessage() for r in caplog.records if "unreachable" in r.getMessage()]
        assert len(lines) >= 3 and all("\n" not in line for line in lines)
        assert lines[0].startswith(
            f"Binance unreachable at ws://127.0.0.1:{port}/stream?streams=btcusdt@miniTicker: "
        )
        assert "retrying in " in lines[0] and lines[0].endswith("s (offline? use `mw replay`)")
        assert CONSECUTIVE_FAILURES._value.get() >= 3
        assert handler.ticks == []  # never fakes data

        async with BinanceServer(klines("BTCUSDT", minutes=10), port=port):
            await wait_until(lambda: len(handler.ticks) == 10, 5, "ticks after the server came up")
        assert client.stats.consecutive_failures == 0
    finally:
        client.stop()
        await asyncio.wait_for(task, 5)


async def test_rollover_opens_new_connection_first_and_drops_overlap_duplicates() -> None:
    data = klines("BTCUSDT", minutes=200)
    async with BinanceServer(data, speed=6000) as server:
        client = BinanceStreamClient(
            server.base_url, ["BTCUSDT"], rollover_s=0.7, overlap_s=0.3, silence_timeout_s=5
        )
        handler = Collector()
        task = asyncio.create_task(client.run(handler))
        try:
            await asyncio.wait_for(server.wait_done(), 10)
            await wait_until(lambda: len(handler.ticks) >= 200, 5, "all ticks")
        finally:
            client.stop()
            await asyncio.wait_for(task, 5)
    got = [(t.symbol, t.ts) for t in handler.ticks]
    assert len(got) == len(set(got)) and set(got) == keys(data)
    assert client.stats.reconnect_reasons.get("rollover", 0) >= 1
    assert client.stats.duplicates > 0  # both connections were live at the same time
    assert server.max_concurrent >= 2
    assert handler.gaps == []


# --- the REST backfill ------------------------------------------------------------------------------


async def test_backfill_waits_for_retry_after_on_429() -> None:
    server = FaultyBinanceServer(klines("BTCUSDT", minutes=30), rest_faults=[429, 429], retry_after="1")
    async with server, Backfiller(server.rest_url) as backfiller:
        ticks = await backfiller.fill("BTCUSDT", after_ms=DAY + 59_999, before_ms=DAY + 10 * 60_000 + 59_999)
    assert [t.ts for t in ticks] == [DAY + i * 60_000 + 59_999 for i in range(1, 10)]
    assert {t.source for t in ticks} == {"rest_backfill"}
    calls = server.rest_calls
    assert [c.status for c in calls] == [429, 429, 200]
    assert calls[1].at - calls[0].at >= 0.95 and calls[2].at - calls[1].at >= 0.95


async def test_backfill_retries_5xx_with_backoff_then_gives_up() -> None:
    server = FaultyBinanceServer(klines("BTCUSDT", minutes=30), rest_faults=[500, 503, 502])
    async with server, Backfiller(server.rest_url, backoff_initial_s=0.05, backoff_max_s=0.2) as backfiller:
        ticks = await backfiller.fill("BTCUSDT", after_ms=DAY, before_ms=DAY + 3 * 60_000)
        assert [t.ts for t in ticks] == [DAY + 59_999, DAY + 119_999, DAY + 179_999]
        assert [c.status for c in server.rest_calls] == [500, 503, 502, 200]

        server.rest_faults.extend([503] * 10)
        backfiller.max_attempts = 3
        with pytest.raises(BackfillError, match="giving up after 3 attempts"):
            await backfiller.fill("BTCUSDT", after_ms=DAY, before_ms=DAY + 3 * 60_000)
        assert len(server.rest_calls) == 7


async def test_backfill_does_not_hammer_a_ban_and_fails_fast_on_4xx() -> None:
    server = FaultyBinanceServer(klines("BTCUSDT", minutes=30), rest_faults=[418], retry_after="3600")
    async with server, Backfiller(server.rest_url) as backfiller:
        with pytest.raises(BackfillError, match="Retry-After 3600s"):
            await backfiller.fill("BTCUSDT", after_ms=DAY, before_ms=DAY + 3 * 60_000)
        with pytest.raises(BackfillError, match="HTTP 400"):
            await backfiller.fill("NOPEUSDT", after_ms=DAY, before_ms=DAY + 3 * 60_000)
    assert [c.status for c in server.rest_calls] == [418, 400]


async def test_backfill_pages_and_caps_pages() -> None:
    async with BinanceServer(klines("BTCUSDT", minutes=300)) as server:
        async with Backfiller(server.rest_url, page_limit=100) as backfiller:
            ticks = await backfiller.fill("BTCUSDT", after_ms=DAY - 1, before_ms=DAY + 250 * 60_000)
            assert [t.ts for t in ticks] == [DAY + i * 60_000 + 59_999 for i in range(250)]
            assert backfiller.requests == 3
        async with Backfiller(server.rest_url, page_limit=100, max_pages=2) as capped:
            assert len(await capped.fill("BTCUSDT", after_ms=DAY - 1, before_ms=DAY + 250 * 60_000)) == 200


# --- the service, end to end through Kafka -------------------------------------------------------------


async def run_until_published(service: IngestService, server: BinanceServer, expected: int) -> None:
    async with running(service):
        await asyncio.wait_for(server.wait_done(), 20)
        await wait_until(lambda: service.stats["ticks_out"] >= expected, 10, f"{expected} ticks published")


def published(records: list[dict[str, Any]]) -> list[tuple[str, int]]:
    return [(r["symbol"], r["ts"]) for r in records]


async def test_abrupt_close_reconnects_and_backfills_the_gap_without_duplicates(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(symbols="BTCUSDT,SOLUSDT", reconnect_max_backoff_s=1.0)
    data = klines("BTCUSDT", "SOLUSDT", minutes=120)
    server = FaultyBinanceServer(data, abort_after=60, drop_after_abort=30)
    async with server:
        service = IngestService(settings, ws_url=server.base_url, rest_url=server.rest_url)
        await run_until_published(service, server, len(data))
    records = await consume(settings, settings.topic_prices, expect=len(data))
    got = published(records)
    assert len(got) == len(set(got)), "duplicates on the topic"
    assert set(got) == keys(data), "gap on the topic"
    assert server.aborted == [1] and server.connections_total >= 2
    stats = service.stats
    assert stats["backfilled"] >= 30 and stats["gaps"] >= 1 and stats["reconnects"] >= 1
    assert sum(r["source"] == "rest_backfill" for r in records) == stats["backfilled"]
    assert all(r["key"] == r["symbol"].encode() for r in records)
    assert any(c.path == "/api/v3/klines" and c.status == 200 for c in server.rest_calls)


async def test_server_shutdown_rolls_over_with_overlap_and_no_duplicates(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(symbols="BTCUSDT,SOLUSDT")
    data = klines("BTCUSDT", "SOLUSDT", minutes=150)
    server = FaultyBinanceServer(data, speed=3000, shutdown_after=60, shutdown_close_after_s=1.5)
    async with server:
        service = IngestService(settings, ws_url=server.base_url, rest_url=server.rest_url)
        await run_until_published(service, server, len(data))
    got = published(await consume(settings, settings.topic_prices, expect=len(data)))
    assert len(got) == len(set(got)) and set(got) == keys(data)
    stats = service.stats
    assert server.shutdown_sent == [1]
    assert stats["reconnect_reasons"].get("server_shutdown") == 1
    # The new connection opened before the old one closed: both delivered the same frames.
    assert server.max_concurrent >= 2 and stats["duplicates"] > 0
    assert stats["backfilled"] == 0


async def test_half_open_connection_is_replaced_by_the_silence_watchdog(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(symbols="BTCUSDT,SOLUSDT", ws_silence_timeout_s=1.0, reconnect_max_backoff_s=1.0)
    data = klines("BTCUSDT", "SOLUSDT", minutes=100)
    server = FaultyBinanceServer(data, freeze_after=50)
    async with server:
        service = IngestService(settings, ws_url=server.base_url, rest_url=server.rest_url)
        started = time.monotonic()
        await run_until_published(service, server, len(data))
        assert time.monotonic() - started < 10
        assert server.frozen == [1]
        assert all(s.id != 1 for s in server.sessions)  # the client closed the half-open connection
    got = published(await consume(settings, settings.topic_prices, expect=len(data)))
    assert len(got) == len(set(got)) and set(got) == keys(data)
    assert service.stats["reconnect_reasons"].get("silence", 0) >= 1


async def test_garbage_frames_go_to_the_dlq_with_reasons(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(symbols="BTCUSDT")
    data = klines("BTCUSDT", minutes=100)
    server = FaultyBinanceServer(data, garbage_every=10, faulty_sessions=())
    async with server:
        service = IngestService(settings, ws_url=server.base_url, rest_url=server.rest_url)
        async with running(service):
            await asyncio.wait_for(server.wait_done(), 10)
            await wait_until(
                lambda: service.stats["ticks_out"] >= 100 and service.stats["dlq_out"] >= 10,
                10,
                "ticks + dlq",
            )
    dead = await consume(settings, settings.topic_dlq, expect=10)
    assert len(dead) == server.garbage_sent == 10
    assert {d["reason"] for d in dead} == GARBAGE_REASONS
    assert {d["source"] for d in dead} == {"binance-ws"}
    assert any(d["raw"] == "{not json" for d in dead)
    got = published(await consume(settings, settings.topic_prices, expect=100))
    assert len(got) == len(set(got)) and set(got) == keys(data)  # ingest went on


async def test_backpressure_keeps_the_buffer_bounded_while_kafka_is_down(tmp_path: Path) -> None:
    suffix = uuid.uuid4().hex[:8]
    settings = load_settings(
        kafka_bootstrap=f"127.0.0.1:{free_port()}",  # nothing listens: Kafka is down
        symbols="BTCUSDT",
        ingest_buffer_size=8,
        topic_prices=f"prices-{suffix}",
        topic_dlq=f"dlq-{suffix}",
        state_dir=tmp_path,
    )
    async with BinanceServer(klines("BTCUSDT", minutes=60), loop=True) as server:
        service = IngestService(settings, ws_url=server.base_url, rest_url=server.rest_url)
        task = asyncio.create_task(service.run())
        try:
            await wait_until(lambda: service.stats["queue_size"] == 8, 5, "a full buffer")
            await asyncio.sleep(2.0)  # let every buffer on the way fill up
            sent = server.frames_sent
            await asyncio.sleep(1.0)
            assert server.frames_sent == sent, "the server kept sending: no backpressure"
            stats = service.stats
            assert stats["queue_high_water"] <= 8 and stats["queue_size"] == 8
            assert stats["ticks_in"] <= 8 + 1 and stats["ticks_out"] == 0
            assert service.health()["status"] != "ok"
        finally:
            started = time.monotonic()
            await asyncio.wait_for(service.stop(), 15)
            await asyncio.wait_for(task, 5)
    assert time.monotonic() - started < 10
    assert service.stats["unpublished_at_stop"] == 8  # reported, not silently dropped
