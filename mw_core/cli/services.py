"""`mw ingest` and `mw process`: the two long-running services, one process each.

Each builds `Settings`, resolves the infrastructure (configured URLs, or embedded servers started
for this process by `mw_core.local.runtime.ensure_infra`), serves ``/metrics`` and ``/healthz``
and runs until SIGTERM / SIGINT, which stop the service gracefully (flush, commit).
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable, Coroutine
from typing import Annotated, Any

import typer

from mw_core.cli.common import console, settings_or_exit
from mw_core.telemetry import MetricsServer


def _run_service(main: Coroutine[Any, Any, Any], stop: Callable[[], Any]) -> None:
    """Run a long-lived coroutine; SIGTERM/SIGINT call `stop()` for a graceful shutdown."""

    async def runner() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop)
        await main

    asyncio.run(runner())


def ingest(
    ws_url: Annotated[
        str | None, typer.Option(help="Binance websocket base URL (default: MW_BINANCE_WS_URL).")
    ] = None,
    rest_url: Annotated[
        str | None, typer.Option(help="Binance REST base URL (default: MW_BINANCE_REST_URL).")
    ] = None,
    metrics_port: Annotated[int | None, typer.Option(help="Port for /metrics and /healthz.")] = None,
) -> None:
    """Run the price ingest: Binance miniTicker websocket -> Kafka `prices`."""
    from mw_core.ingest.service import IngestService
    from mw_core.local.runtime import ensure_infra

    settings = settings_or_exit(binance_ws_url=ws_url, binance_rest_url=rest_url, metrics_port=metrics_port)
    infra = ensure_infra(settings)
    service = IngestService(infra.settings)
    metrics = MetricsServer(service.health, host=settings.host, port=settings.metrics_port).start()
    console.print(f"ingest: metrics and health on {metrics.url}/metrics {metrics.url}/healthz")
    try:
        _run_service(service.run(), lambda: asyncio.ensure_future(service.stop()))
    finally:
        metrics.stop()
        infra.close()


def process(
    metrics_port: Annotated[int | None, typer.Option(help="Port for /metrics and /healthz.")] = None,
) -> None:
    """Run the processor: Kafka `prices` -> windows, anomalies -> PostgreSQL, `alerts`, `dlq`."""
    from mw_core.local.runtime import ensure_infra
    from mw_core.processor.service import Processor, tune_gc

    settings = settings_or_exit(metrics_port=metrics_port)
    infra = ensure_infra(settings)
    processor = Processor(infra.settings)
    tune_gc()
    metrics = MetricsServer(processor.health, host=settings.host, port=settings.metrics_port).start()
    console.print(f"processor: metrics and health on {metrics.url}/metrics {metrics.url}/healthz")
    try:
        _run_service(processor.run(), processor.stop)
    finally:
        metrics.stop()
        infra.close()
