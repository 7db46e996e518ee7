"""Market Watch on Dagster: the batch and enrichment side (assets, checks, sensors, schedules).

The code location is `mw_dagster.definitions` (see ``workspace.yaml``). This package imports
`mw_core`; `mw_core` never imports it. Importing the package itself is cheap: nothing here
imports dagster until a submodule is used.
"""
