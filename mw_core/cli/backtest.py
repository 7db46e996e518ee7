"""`mw backtest`: the analysis + episode code over recorded klines or stored prices, no services.

Usage: ``mw backtest FILE.csv... | --from-db --start ISO --end ISO [--symbols ...]
[--set KEY=VALUE ...] [--compare KEY=VALUE ...] [--move-pct 3] [--json]``.
Prints a table per symbol and UTC day (``--compare``: both configurations side by side), or one
JSON object ``{"config", "days", "alerts"[, "compare"]}`` (`mw_core.batch.backtest`).
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any

import orjson
import typer
from rich.table import Table

from mw_core.cli.common import console, out, settings_or_exit
from mw_core.config import ConfigError, Settings

if TYPE_CHECKING:  # the command imports the use case (pandas) when it runs, not `mw --help`
    from mw_core.batch.backtest import BacktestRun

__all__ = ["backtest"]


def _instant_ms(text: str, option: str) -> int:
    """ISO-8601 date or time -> epoch ms; a time without zone is UTC."""
    try:
        dt = datetime.fromisoformat(text.strip())
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not an ISO-8601 time", param_hint=option) from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp() * 1000)


def _database_url(settings: Settings) -> str:
    """`MW_DATABASE_URL`, or the embedded PostgreSQL of `mw up` when it runs."""
    if settings.database_url is not None:
        return settings.database_url.get_secret_value()
    from mw_core.local.pg_urls import with_database
    from mw_core.local.postgres import EmbeddedPostgres
    from mw_core.local.runtime import APP_DATABASE

    pg = EmbeddedPostgres(settings.state_dir / "pg")
    if not pg.is_running():
        console.print("[red]--from-db: no database: set MW_DATABASE_URL or start one with `mw up`[/red]")
        raise typer.Exit(2)
    return with_database(pg.url(), APP_DATABASE)


def backtest(
    files: Annotated[
        list[str] | None, typer.Argument(help="Kline CSV dumps (Binance format), directories or `sample`.")
    ] = None,
    from_db: Annotated[
        bool, typer.Option("--from-db", help="Read stored `prices` instead of files.")
    ] = False,
    start: Annotated[str | None, typer.Option(help="--from-db: start (ISO-8601, UTC if no zone).")] = None,
    end: Annotated[str | None, typer.Option(help="--from-db: end, exclusive (ISO-8601).")] = None,
    symbols: Annotated[
        list[str] | None, typer.Option("--symbols", help="Only these symbols (repeat or CSV).")
    ] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Setting override KEY=VALUE (repeatable).")
    ] = None,
    compare: Annotated[
        list[str] | None,
        typer.Option(help="Second configuration: base + --set + these KEY=VALUE (repeatable)."),
    ] = None,
    move_pct: Annotated[
        float, typer.Option(min=0.01, help="A move: |5-minute return| of at least this many %.")
    ] = 3.0,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Run the stream's analysis and alert episodes over recorded klines or stored prices."""
    from mw_core.batch.backtest import BacktestOptions, backtest_db, backtest_files, parse_overrides

    settings = settings_or_exit(log_level="WARNING" if as_json else None)
    wanted = [s.strip().upper() for item in symbols or [] for s in item.split(",") if s.strip()]
    try:
        options = BacktestOptions(
            overrides=parse_overrides(set_ or []),
            compare=parse_overrides(compare) if compare else None,
            symbols=wanted or None,
            move_pct=move_pct,
        )
        if from_db:
            if files:
                raise typer.BadParameter("give FILES or --from-db, not both")
            if start is None or end is None:
                raise typer.BadParameter("--from-db needs --start and --end")
            start_ms, end_ms = _instant_ms(start, "--start"), _instant_ms(end, "--end")
            if end_ms <= start_ms:
                raise typer.BadParameter("--end must be after --start", param_hint="--end")
            url = _database_url(settings)
            run = backtest_db(url, settings, start_ms=start_ms, end_ms=end_ms, options=options)
        elif files:
            run = backtest_files(files, settings, options)
        else:
            raise typer.BadParameter("give kline FILES (or `sample`), or --from-db --start --end")
    except (ConfigError, FileNotFoundError) as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    if as_json:
        sys.stdout.write(orjson.dumps(run.as_json()).decode() + "\n")
        return
    _print(run)


# --- the table ---------------------------------------------------------------------------------------


def _lag(value: Any) -> str:
    if value is None:
        return "-"
    seconds = int(value)
    if seconds < 120:
        return f"{seconds}s"
    hours, minutes = divmod(seconds // 60, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m"


def _cells(row: dict[str, Any]) -> list[str]:
    largest = "-"
    if row["largest_move_pct"] is not None:
        largest = f"{row['largest_move_pct']:+.1f}% " + (
            "yes" if row["largest_move_alerted"] else "[red]NO[/red]"
        )
    return [
        str(row["detections"]),
        str(row["alerts"]),
        _lag(row["first_move_lag_s"]),
        _lag(row["max_move_lag_s"]),
        str(row["moves_unalerted"]),
        largest,
        str(row["worst_hour_alerts"]),
    ]


#: detections, alerts (open + escalate), lag of the first move, largest lag of an alerted move,
#: moves with no alert, the largest 5-minute move and whether it was alerted, alerts in the worst hour.
HEADERS = ["detect", "alerts", "1st lag", "max lag", "unalerted", "largest (alerted)", "worst h"]


def _print(run: BacktestRun) -> None:
    rows = run.day_rows()
    other = {(r["symbol"], r["day"]): r for r in run.compare.day_rows()} if run.compare else None
    title = (
        f"backtest: {len(run.anomalies)} detections, {sum(r['alerts'] for r in rows)} alerts; "
        f"moves = |5-min return| >= {run.move_pct:g}%"
    )
    table = Table(title=title)
    for name in ("symbol", "day", "moves", *HEADERS):
        table.add_column(name, no_wrap=name in ("symbol", "day"))
    for row in rows:
        cells = _cells(row)
        if other is not None:
            b = _cells(other[(row["symbol"], row["day"])])
            cells = [x if x == y else f"{x}[bold]→{y}[/bold]" for x, y in zip(cells, b, strict=True)]
        table.add_row(row["symbol"], row["day"], str(row["moves"]), *cells)
    out.print(table)
    out.print(f"config: {_overrides(run.overrides)} ({run.seconds:.2f}s)")
    if run.compare is not None:
        out.print(f"compare (→): {_overrides(run.compare.overrides)} ({run.compare.seconds:.2f}s)")


def _overrides(overrides: dict[str, str]) -> str:
    return ", ".join(f"{k}={v}" for k, v in overrides.items()) or "defaults"
