"""`python -m mw_core.cli`."""

from mw_core.cli.app import main

main()
