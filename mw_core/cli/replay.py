"""`mw replay` and the hidden `mw replay-server`: recorded klines instead of live Binance.

- `mw replay FILES` runs a whole replay in this process (local Binance-protocol server, the real
  ingest, Kafka, the processor) and prints the anomalies found (``--json`` for one JSON object).
- `mw replay-server FILES` is the server process that `mw up --replay` supervises: it serves the
  Binance websocket + REST protocol until SIGTERM and writes its URLs to ``--ready-file`` (JSON,
  replaced atomically) once it serves; the file is removed when it stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated

import orjson
import typer
from rich.table import Table

from mw_core.cli.common import console, out, settings_or_exit

log = logging.getLogger(__name__)


def replay(
    files: Annotated[list[str], typer.Argument(help="Kline CSV files (Binance dump format) or `sample`.")],
    speed: Annotated[str, typer.Option(help="`max` or a real-time multiplier such as 60.")] = "max",
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON object with ticks and anomalies.")
    ] = False,
    timeout: Annotated[float, typer.Option(help="Give up after this many seconds.")] = 600.0,
) -> None:
    """Replay recorded klines through a local Binance server, the real ingest, Kafka and the processor."""
    from mw_core.notify.channels import ChannelConfigError
    from mw_core.notify.routing import RoutingError
    from mw_core.replay.run import run_replay

    settings = settings_or_exit(log_level="WARNING" if as_json else None)
    try:
        result = run_replay(settings, files, speed=speed, timeout=timeout, progress=not as_json)
    except (FileNotFoundError, ChannelConfigError, RoutingError) as exc:  # messages hold no URL
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
    for ch in result.notifications or []:
        out.print(
            f"notify {ch['channel']}: {ch['delivered']} delivered, {ch['dead']} dead-lettered, "
            f"{ch['backlog']} waiting ({ch['circuit']})"
        )


def replay_server(
    files: Annotated[list[str], typer.Argument(help="Kline CSV files or `sample`.")],
    speed: Annotated[str, typer.Option(help="`max` or a real-time multiplier.")] = "60",
    loop: Annotated[bool, typer.Option(help="Start over at the end.")] = False,
    host: Annotated[str, typer.Option(help="Bind address.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port (0 = free port).")] = 0,
    ready_file: Annotated[Path | None, typer.Option(help="Write the URLs here as JSON once serving.")] = None,
) -> None:
    """Serve recorded klines over the Binance websocket + REST protocol until SIGTERM."""
    from mw_core.replay.klines import resolve_sources

    settings_or_exit()
    try:
        paths = resolve_sources(files)
    except FileNotFoundError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    asyncio.run(_serve_replay(paths, speed=speed, loop=loop, host=host, port=port, ready_file=ready_file))


async def _serve_replay(
    paths: Sequence[Path], *, speed: str, loop: bool, host: str, port: int, ready_file: Path | None
) -> None:
    from mw_core.replay.server import BinanceServer

    server = BinanceServer.from_sources(list(paths), speed=speed, loop=loop, host=host, port=port)
    ws_url = await server.start()
    stop = asyncio.Event()
    running = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        running.add_signal_handler(sig, stop.set)
    if ready_file is not None:
        ready = {"pid": os.getpid(), "ws_url": ws_url, "rest_url": server.rest_url, "symbols": server.symbols}
        tmp = ready_file.with_suffix(".tmp")
        await asyncio.to_thread(tmp.write_text, json.dumps(ready))
        os.replace(tmp, ready_file)
    log.info("replay server: websocket %s, REST %s, symbols %s", ws_url, server.rest_url, server.symbols)
    try:
        await stop.wait()
    finally:
        await server.stop()
        if ready_file is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(ready_file)
