"""PostgreSQL adapter: one module per concern, imported by name (no re-exports here).

- `pool`: asyncpg pools and the ``SELECT 1`` health check.
- `schema`: versioned migrations (`apply_schema`) and row counts of our tables.
- `prices`: the `prices` / `metrics` repository and the processor's atomic batch write.
- `anomalies`: the stream's `anomalies` table, which is also the alert outbox.
- `charts`: set-based reads for charts and the market overview (price windows, overview rows).
- `quality`: data-quality and health questions behind the Dagster asset checks.

Headlines and enrichments live with their rooms (`mw_core.news.store`, `mw_core.enrich.store`).
"""
