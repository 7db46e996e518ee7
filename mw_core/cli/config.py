"""`mw config`: the effective configuration, secrets masked (``--markdown``: the README table)."""

from __future__ import annotations

import sys
from typing import Annotated

import orjson
import typer
from rich.table import Table

from mw_core.cli.common import out, settings_or_exit
from mw_core.config import env_var, markdown_table


def config(
    as_json: Annotated[bool, typer.Option("--json")] = False,
    markdown: Annotated[
        bool, typer.Option("--markdown", help="Print the README's configuration table.")
    ] = False,
) -> None:
    """Show the effective configuration (secrets masked)."""
    if markdown:
        sys.stdout.write(markdown_table() + "\n")
        return
    settings = settings_or_exit()
    data = settings.safe_dict()
    if as_json:
        sys.stdout.write(orjson.dumps(data, default=str, option=orjson.OPT_NON_STR_KEYS).decode() + "\n")
        return
    table = Table("variable", "value", title="configuration")
    for k, v in data.items():
        table.add_row(env_var(k), str(v))
    out.print(table)
