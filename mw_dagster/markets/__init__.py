"""Markets domain: the stream's `prices` and `anomalies` (external assets), `price_anomalies`,
their daily batch reconciliation, with its partitions, job, schedule and the data-quality checks;
`market_backtest`; and the pictures: `market_overview` (every 15 min) and the daily `market_report`.

`definitions.defs` holds the domain's definitions.
"""
