"""LLM enrichment of anomaly alerts (called by Dagster's `alert_enrichments` asset).

Modules:
- `prompt`: pure policy: grounded prompt, output vetting, template summary, per-run `Budget`.
- `llm`: `LLMClient` over any OpenAI-compatible API, with bounded retries.
- `store`: asyncpg access to `anomalies`, `headlines` and `alert_enrichments`.
- `service`: `enrich_pending_async` / `enrich_anomalies` runs and `publish_enrichments`.
- `run`: `enrich_and_publish`, the use case the Dagster asset runs (own pool, then publish).

Nothing is imported here, so importing the pure `prompt` module loads no network library.
"""
