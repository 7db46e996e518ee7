"""Batch room: the use cases Dagster runs over stored data (anomaly partitions, news and enrichment runs)."""
