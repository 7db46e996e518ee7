"""What every `mw` command shares: the two consoles and settings-or-exit."""

from __future__ import annotations

from typing import Any

import typer
from rich.console import Console

from mw_core.config import ConfigError, Settings, load_settings
from mw_core.telemetry import configure_logging

console = Console(stderr=True)  # messages, progress, errors
out = Console()  # results (tables); machine-readable output goes to sys.stdout directly


def settings_or_exit(**overrides: Any) -> Settings:
    """Build `Settings` from the environment + non-None overrides and configure logging.

    An invalid configuration prints the message (it names the variable) and exits with status 2.
    """
    try:
        settings = load_settings(**{k: v for k, v in overrides.items() if v is not None})
    except ConfigError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    configure_logging(settings)
    return settings
