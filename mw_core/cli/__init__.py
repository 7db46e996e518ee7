"""`mw` command line: one module per command group, registered explicitly in `app`."""

from mw_core.cli.app import main

__all__ = ["main"]
