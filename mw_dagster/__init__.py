"""Market Watch on Dagster: the batch and enrichment side, one folder per domain.

- `infra/`: the PostgreSQL schema and the health of the price flow.
- `markets/`: the stream's `prices` and `anomalies` (external assets), `price_anomalies` (their
  daily batch reconciliation), partitions, checks, job and schedule.
- `news/`: `headlines` from the feeds, its checks and job.
- `alerts/`: `alert_events` (external) and `alert_enrichments` (LLM context per alert), its job.
- `maintenance/`: the purge of Dagster's own history and the hourly data-quality checks.

Each domain's ``definitions.defs`` is merged, with the sensors (top-level `sensors` package) and
the resources (`resources`), by the code location `mw_dagster.definitions` (see ``workspace.yaml``).
`formatting` renders metadata (markdown tables, times); `_compat` holds Dagster workarounds.
This package imports `mw_core`; `mw_core` never imports it. Importing the package itself is cheap:
nothing here imports dagster until a submodule is used.
"""
