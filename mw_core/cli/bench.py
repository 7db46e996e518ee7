"""`mw bench processor`: the processor's throughput and latency on synthetic ticks."""

from __future__ import annotations

import sys
from typing import Annotated

import orjson
import typer
from rich.table import Table

from mw_core.cli.common import out, settings_or_exit


def processor(
    ticks: Annotated[int, typer.Option(help="Ticks to produce.")] = 1_000_000,
    symbols: Annotated[int, typer.Option(help="Distinct symbols.")] = 500,
    rate: Annotated[
        float, typer.Option(help="Produce at this many ticks/s (0 = as fast as possible).")
    ] = 0.0,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Produce N ticks for S symbols, run the processor to completion, report throughput and latency."""
    from mw_core.local.runtime import ensure_infra
    from mw_core.processor.benchmark import run_processor_bench

    settings = settings_or_exit(log_level="WARNING")
    infra = ensure_infra(settings, stop_postgres=True)
    try:
        result = run_processor_bench(infra.settings, ticks=ticks, symbols=symbols, rate=rate)
    finally:
        infra.close()
    if as_json:
        sys.stdout.write(orjson.dumps(result).decode() + "\n")
    else:
        table = Table("metric", "value", title="processor benchmark")
        for k, v in result.items():
            table.add_row(k, f"{v:,.2f}" if isinstance(v, float) else str(v))
        out.print(table)
