"""Markets domain: the stream's `prices` and `anomalies` (external assets) and `price_anomalies`,
their daily batch reconciliation, with its partitions, job, schedule and the data-quality checks.

`definitions.defs` holds the domain's definitions.
"""
