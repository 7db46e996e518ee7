"""`mw`: the command line of Market Watch. Every command is registered here, explicitly.

One module per command group; each command builds `Settings` once (environment + flags),
configures logging and runs one service or task. Modules import their heavy dependencies inside
the command, so `mw --help` stays fast; an import error in a command module fails `mw` at once
rather than hiding its commands.
"""

from __future__ import annotations

import typer

from mw_core.cli import backtest, bench, config, doctor, news, notify, replay, services, stack

app = typer.Typer(
    help="Market Watch: real-time crypto market watch (Binance -> Kafka -> processor -> PostgreSQL, Dagster).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Services (`services`), recorded data (`replay`), checks and configuration.
app.command()(services.ingest)
app.command()(services.process)
app.command()(replay.replay)
app.command()(backtest.backtest)
app.command()(doctor.doctor)
app.command()(config.config)

# The local platform (`stack`).
app.command()(stack.up)
app.command()(stack.status)
app.command()(stack.logs)
app.command()(stack.down)
app.command("init")(stack.init_command)
app.command("replay-server", hidden=True)(replay.replay_server)

news_app = typer.Typer(help="News feeds: parse and inspect.", no_args_is_help=True)
news_app.command("parse")(news.parse)
app.add_typer(news_app, name="news")

bench_app = typer.Typer(help="Benchmarks (numbers go to the README).", no_args_is_help=True)
bench_app.command("processor")(bench.processor)
app.add_typer(bench_app, name="bench")
app.add_typer(notify.app, name="notify")


def main() -> None:
    app()


__all__ = ["app", "main"]
