"""Maintenance domain: upkeep on a clock, materializing nothing: the daily purge of Dagster's own
history (`maintenance_job`) and the hourly data-quality checks (`quality_checks_job`).

`definitions.defs` holds the domain's definitions.
"""
