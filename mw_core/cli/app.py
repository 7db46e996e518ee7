"""`mw` command line: the platform's entry points.

Each command builds `Settings` once (environment + flags), configures logging, resolves the
infrastructure (configured URLs or embedded servers) and runs one service or task.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import Coroutine
from typing import Annotated, Any

import orjson
import typer
from rich.console import Console
from rich.table import Table

from mw_core.cli.common import console, settings_or_exit
from mw_core.telemetry import MetricsServer

app = typer.Typer(
    help="Market Watch: real-time crypto market watch (Binance -> Kafka -> processor -> PostgreSQL, Dagster).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
news_app = typer.Typer(help="News feeds: parse and inspect.", no_args_is_help=True)
bench_app = typer.Typer(help="Benchmarks (numbers go to the README).", no_args_is_help=True)
app.add_typer(news_app, name="news")
app.add_typer(bench_app, name="bench")

out = Console()


def _run_service(main: Coroutine[Any, Any, Any], stop: Any) -> None:
    """Run a long-lived coroutine; SIGTERM/SIGINT call `stop()` for a graceful shutdown."""

    async def runner() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop)
        await main

    asyncio.run(runner())


@app.command()
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


@app.command()
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


@app.command()
def replay(
    files: Annotated[list[str], typer.Argument(help="Kline CSV files (Binance dump format) or `sample`.")],
    speed: Annotated[str, typer.Option(help="`max` or a real-time multiplier such as 60.")] = "max",
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON object with ticks and anomalies.")
    ] = False,
    timeout: Annotated[float, typer.Option(help="Give up after this many seconds.")] = 600.0,
) -> None:
    """Replay recorded klines through a local Binance server, the real ingest, Kafka and the processor."""
    from mw_core.replay.run import run_replay

    settings = settings_or_exit(log_level="WARNING" if as_json else None)
    try:
        result = run_replay(settings, files, speed=speed, timeout=timeout, progress=not as_json)
    except FileNotFoundError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    if as_json:
        sys.stdout.write(orjson.dumps(result.as_json()).decode() + "\n")
        return
    out.print(
        f"[bold]{result.ticks}[/bold] ticks replayed from {len(result.sources)} file(s) in "
        f"{result.seconds:.1f}s; {result.dead_letters} dead letters"
    )
    table = Table(
        "symbol", "time (UTC)", "window", "return", "direction", title=f"{len(result.anomalies)} anomalies"
    )
    for a in result.anomalies:
        table.add_row(a["symbol"], a["ts"], f"{a['window_s']}s", f"{a['ret'] * 100:+.2f}%", a["direction"])
    out.print(table)


@app.command()
def doctor(
    timeout: Annotated[float, typer.Option(help="Seconds per check.")] = 5.0,
) -> None:
    """Check the database, Kafka, and Binance reachability; print a table."""
    from mw_core.cli.doctor import run_checks

    settings = settings_or_exit()
    results = asyncio.run(run_checks(settings, timeout=timeout))
    table = Table("check", "target", "status", "detail", title="Market Watch doctor")
    for r in results:
        colour = {"ok": "green", "warn": "yellow", "fail": "red"}[r.status]
        table.add_row(r.name, r.target, f"[{colour}]{r.status}[/{colour}]", r.detail)
    out.print(table)
    if any(r.status == "fail" for r in results):
        raise typer.Exit(1)


@news_app.command("parse")
def news_parse(
    sources: Annotated[list[str], typer.Argument(help="Feed files or URLs.")],
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per item.")] = False,
) -> None:
    """Fetch + parse + sanitize + score feeds exactly like the `headlines` asset, and print the items."""
    from mw_core.news import collect

    settings = settings_or_exit(log_level="WARNING")
    results = asyncio.run(collect(sources, symbols=settings.symbols))
    failed = False
    for res in results:
        for err in res.errors:
            failed = True
            if as_json:
                sys.stdout.write(orjson.dumps({"source": res.source, "error": err}).decode() + "\n")
            else:
                console.print(f"[red]{res.source}: {err}[/red]")
        for item in res.items:
            if as_json:
                row = {
                    "id": item.id,
                    "title": item.title,
                    "link": item.link,
                    "published": item.published.isoformat() if item.published else None,
                    "source": item.source,
                    "sentiment": round(item.sentiment, 4),
                    "symbols": list(item.symbols),
                }
                sys.stdout.write(orjson.dumps(row).decode() + "\n")
            else:
                when = item.published.strftime("%Y-%m-%d %H:%M") if item.published else "-"
                out.print(f"{when}  {item.sentiment:+.2f}  {','.join(item.symbols) or '-':<16} {item.title}")
    if failed:
        raise typer.Exit(1)


@bench_app.command("processor")
def bench_processor(
    ticks: Annotated[int, typer.Option(help="Ticks to produce.")] = 1_000_000,
    symbols: Annotated[int, typer.Option(help="Distinct symbols.")] = 500,
    rate: Annotated[
        float, typer.Option(help="Produce at this many ticks/s (0 = as fast as possible).")
    ] = 0.0,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Produce N ticks for S symbols, run the processor to completion, report throughput and latency."""
    from mw_core.processor.benchmark import run_processor_bench

    settings = settings_or_exit(log_level="WARNING")
    result = run_processor_bench(settings, ticks=ticks, symbols=symbols, rate=rate)
    if as_json:
        sys.stdout.write(orjson.dumps(result).decode() + "\n")
    else:
        table = Table("metric", "value", title="processor benchmark")
        for k, v in result.items():
            table.add_row(k, f"{v:,.2f}" if isinstance(v, float) else str(v))
        out.print(table)


@app.command()
def config(
    as_json: Annotated[bool, typer.Option("--json")] = False,
    markdown: Annotated[
        bool, typer.Option("--markdown", help="Print the README's configuration table.")
    ] = False,
) -> None:
    """Show the effective configuration (secrets masked)."""
    if markdown:
        from mw_core.config import markdown_table

        sys.stdout.write(markdown_table() + "\n")
        return
    settings = settings_or_exit()
    data = settings.safe_dict()
    if as_json:
        sys.stdout.write(orjson.dumps(data, default=str, option=orjson.OPT_NON_STR_KEYS).decode() + "\n")
        return
    table = Table("variable", "value", title="configuration")
    for k, v in data.items():
        table.add_row(f"MW_{k.upper()}", str(v))
    out.print(table)


def _mount_stack_commands() -> None:
    """`mw up/status/logs/down` live in `cli_stack` (process supervision)."""
    with contextlib.suppress(ImportError):
        from mw_core.cli.stack import stack_app

        app.registered_commands.extend(stack_app.registered_commands)


_mount_stack_commands()


def main() -> None:
    app()


__all__ = ["app", "main"]


if __name__ == "__main__":
    main()
