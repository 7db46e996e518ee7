"""`mw news parse`: feeds through the same fetch + parse + sanitize + score as the `headlines` asset."""

from __future__ import annotations

import asyncio
import sys
from typing import Annotated

import orjson
import typer

from mw_core.cli.common import console, out, settings_or_exit


def parse(
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
