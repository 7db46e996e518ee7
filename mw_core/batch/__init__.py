"""Batch room: the `price_anomalies` partition use case Dagster runs over stored ticks (`partition`)."""
