"""`mw notify` (the notifier service) and `mw notify test` (one test message per channel).

Register in `mw_core/cli/app.py` with::

    app.add_typer(notify.app, name="notify")
"""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Annotated

import typer
from rich.table import Table

from mw_core.cli.common import console, out, settings_or_exit
from mw_core.telemetry import MetricsServer

log = logging.getLogger(__name__)

app = typer.Typer(
    help="Notifications: deliver alert events to Slack, Discord, Telegram, email, webhooks.",
    invoke_without_command=True,
)


@app.callback()
def notify(
    ctx: typer.Context,
    metrics_port: Annotated[int | None, typer.Option(help="Port for /metrics and /healthz.")] = None,
) -> None:
    """Run the notifier: Kafka `alerts` -> every channel of MW_NOTIFY_URLS / MW_WEBHOOK_URL."""
    if ctx.invoked_subcommand is not None:
        return
    from mw_core.local.runtime import ensure_infra
    from mw_core.notify.channels import ChannelConfigError
    from mw_core.notify.routing import RoutingError
    from mw_core.notify.service import NotifyService

    settings = settings_or_exit(metrics_port=metrics_port)
    infra = ensure_infra(settings)
    try:
        service = NotifyService(infra.settings)
    except (ChannelConfigError, RoutingError) as exc:
        console.print(f"[red]{exc}[/red]")
        infra.close()
        raise typer.Exit(2) from None
    if not service.channels:
        # `mw up` always runs the notifier (so `mw status` shows it); without channels it is idle.
        log.warning("notify: no channels configured (set MW_NOTIFY_URLS and/or MW_WEBHOOK_URL)")
    metrics = MetricsServer(service.health, host=settings.host, port=settings.metrics_port).start()
    console.print(f"notify: metrics and health on {metrics.url}/metrics {metrics.url}/healthz")

    async def runner() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, service.stop)
        await service.run()

    try:
        asyncio.run(runner())
    finally:
        metrics.stop()
        infra.close()


@app.command("test")
def test(
    channel: Annotated[
        int | None, typer.Option("--channel", help="Only this channel (1-based, as listed).")
    ] = None,
) -> None:
    """Send one test message (symbol MWTEST) through each channel and print a result table."""
    from mw_core.notify.channels import ChannelConfigError
    from mw_core.notify.checks import send_test
    from mw_core.notify.routing import RoutingError

    settings = settings_or_exit(log_level="WARNING")
    try:
        results = asyncio.run(send_test(settings, channel))
    except (ChannelConfigError, RoutingError) as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    if not results:
        console.print("no channel configured: set MW_NOTIFY_URLS and/or MW_WEBHOOK_URL")
        raise typer.Exit(1)
    table = Table("#", "channel", "route", "result", "HTTP", "latency", "error", title="mw notify test")
    for r in results:
        result = "[green]delivered[/green]" if r.ok else "[red]failed[/red]"
        http = str(r.http_status) if r.http_status is not None else "-"
        table.add_row(str(r.position), r.name, r.route, result, http, f"{r.latency_ms:.0f} ms", r.error or "")
    out.print(table)
    if not all(r.ok for r in results):
        raise typer.Exit(1)
