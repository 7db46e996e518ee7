"""`mw replay`: recorded klines -> local Binance server -> real ingest -> Kafka -> real processor -> DB.

Contract: `run_replay` starts whatever embedded infrastructure is missing, serves the recorded
days through `BinanceServer` (one miniTicker per symbol per minute, ``E`` = kline close time), runs
the real `IngestService` and `Processor` on a run-specific topic and consumer group, waits until
every frame was received, published and processed (durable, offsets committed), and returns the
tick count, the anomalies stored for the replayed time range and the episode events published for
it (``alerts``, the same shape as `mw backtest --json`).

When channels are configured (``MW_NOTIFY_URLS`` / ``MW_WEBHOOK_URL``) the run also runs the
notifier on its own alerts topic and returns only once every replayed alert event reached a final
delivery state on every channel: delivered, parked or dead-lettered (`mw_core.replay.deliveries`);
``notifications`` then holds the per-channel counts.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from mw_core.adapters.postgres.episodes import published_events
from mw_core.adapters.postgres.pool import create_pool
from mw_core.config import Settings
from mw_core.ingest.service import IngestService
from mw_core.local.runtime import ensure_infra
from mw_core.markets.episodes import alert_json, alert_order
from mw_core.models import ms_to_dt
from mw_core.notify.service import NotifyService
from mw_core.processor.service import Processor
from mw_core.replay import deliveries
from mw_core.replay.klines import resolve_sources
from mw_core.replay.server import BinanceServer


@dataclass
class ReplayResult:
    ticks: int
    seconds: float
    sources: list[str]
    dead_letters: int = 0
    anomalies: list[dict[str, Any]] = field(default_factory=list)
    alerts: list[dict[str, Any]] = field(default_factory=list)  # published episode events (`alert_json`)
    notifications: list[dict[str, Any]] | None = None  # per channel, when the notifier ran

    def as_json(self) -> dict[str, Any]:
        out = {"ticks": self.ticks, "anomalies": self.anomalies, "alerts": self.alerts}
        if self.notifications is not None:
            out["notifications"] = self.notifications
        return out


async def _wait_for(predicate: Any, *, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"replay: timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def _replay(
    settings: Settings, sources: Sequence[str], *, speed: str, timeout: float, progress: bool
) -> ReplayResult:
    started = time.monotonic()
    server = BinanceServer.from_sources(list(sources), speed=speed)
    if server.total_frames == 0:
        raise FileNotFoundError("replay: the given files hold no klines")
    suffix = uuid.uuid4().hex[:8]
    settings = settings.model_copy(
        update={
            "symbols": server.symbols,
            "topic_prices": f"{settings.topic_prices}-replay-{suffix}",
            "consumer_group": f"{settings.consumer_group}-replay-{suffix}",
        }
    )
    notifier: NotifyService | None = None
    if deliveries.notifying(settings):
        settings = deliveries.replay_settings(settings, suffix)
        notifier = NotifyService(settings)  # a bad channel config fails before anything starts
        await notifier.start()
    notify_task = asyncio.create_task(notifier.run(), name="replay-notify") if notifier else None
    first_kline, _ = server.frame_at(0)
    last_kline, _ = server.frame_at(server.total_frames - 1)
    await server.start()
    ingest = IngestService(settings, ws_url=server.base_url, rest_url=server.rest_url)
    processor = Processor(settings)
    await processor.start()
    proc_task = asyncio.create_task(processor.run(), name="replay-processor")
    ingest_task = asyncio.create_task(ingest.run(), name="replay-ingest")
    bar: Any = None
    if progress:
        from rich.progress import Progress

        bar = Progress(transient=True)
        bar.start()
        task_id = bar.add_task("replaying", total=server.total_frames)

    def received() -> bool:
        st = ingest.stats
        if bar is not None:
            bar.update(task_id, completed=processor.stats.consumed)
        return server.done and st["ticks_in"] + st["dlq"] + st["duplicates"] >= server.frames_sent

    try:
        await _wait_for(received, timeout=timeout, what="the ingest to receive every frame")
        await ingest.stop()
        await ingest_task
        published = int(ingest.stats["ticks_out"])

        def processed() -> bool:
            if bar is not None:
                bar.update(task_id, completed=processor.stats.consumed)
            return processor.stats.consumed >= published

        await _wait_for(processed, timeout=timeout, what="the processor to consume every tick")
        processor.stop()
        stats = await proc_task
    finally:
        if bar is not None:
            bar.stop()
        if not ingest_task.done():
            await ingest.stop()
        if not proc_task.done():
            processor.stop()
            with contextlib.suppress(Exception):
                await proc_task
        await server.stop()

    assert settings.database_url is not None
    pool = await create_pool(settings.database_url.get_secret_value())
    notifications: list[dict[str, Any]] | None = None
    try:
        rows = await pool.fetch(
            """
            SELECT symbol, ts, window_s, ret, direction
            FROM anomalies
            WHERE symbol = ANY($1::text[])
              AND ts BETWEEN timestamptz 'epoch' + $2::int8 * interval '1 millisecond'
                         AND timestamptz 'epoch' + $3::int8 * interval '1 millisecond'
            ORDER BY ts, symbol, window_s
            """,
            server.symbols,
            first_kline.close_time,
            last_kline.close_time,
        )
        # The episode events the processor published (acknowledged by Kafka: published_at set),
        # read back once everything is durable. From the outbox table rather than the topic, so a
        # second replay into the same database reports the same alerts (its processor finds them
        # stored and published already, and publishes nothing twice).
        events = await published_events(
            pool, symbols=server.symbols, start_ms=first_kline.close_time, end_ms=last_kline.close_time + 1
        )
        if notifier is not None:
            await deliveries.settle(notifier, pool, events, published=stats.alerts, timeout=timeout)
            notifications = deliveries.summary(notifier)
    finally:
        await pool.close()
        if notifier is not None and notify_task is not None:
            notifier.stop()
            with contextlib.suppress(Exception):
                await notify_task
    anomalies = [
        {
            "symbol": r["symbol"],
            "ts": r["ts"].isoformat().replace("+00:00", "Z"),
            "window_s": r["window_s"],
            "ret": round(float(r["ret"]), 6),
            "direction": r["direction"],
        }
        for r in rows
    ]
    return ReplayResult(
        ticks=published,
        seconds=time.monotonic() - started,
        sources=[str(p) for p in resolve_sources(sources)],
        dead_letters=stats.dead_letters + int(ingest.stats["dlq"]),
        anomalies=anomalies,
        alerts=sorted((alert_json(e) for e in events), key=alert_order),
        notifications=notifications,
    )


def run_replay(
    settings: Settings,
    sources: Sequence[str],
    *,
    speed: str = "max",
    timeout: float = 600.0,
    progress: bool = False,
) -> ReplayResult:
    """Replay kline dumps (or ``sample``) through the whole streaming pipeline; see module docstring."""
    resolve_sources(sources)  # fail fast with FileNotFoundError before starting servers
    infra = ensure_infra(settings, stop_postgres=True)
    try:
        return asyncio.run(_replay(infra.settings, sources, speed=speed, timeout=timeout, progress=progress))
    finally:
        infra.close()


__all__ = ["ReplayResult", "ms_to_dt", "run_replay"]
