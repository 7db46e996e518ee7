"""LLM enrichment of alerts (called by Dagster's `alert_enrichments` asset).

An alert is what a person receives: an episode event of kind ``open`` or ``escalate``
(`alert_events`), never a raw detection; one LLM call per alert and model.

Modules:
- `prompt`: pure policy: grounded prompt, output vetting, template summary, per-run `Budget`.
- `llm`: `LLMClient` over any OpenAI-compatible API, with bounded retries.
- `store`: asyncpg access to `alert_events`, `headlines` and `alert_enrichments`.
- `service`: `enrich_pending_async` / `enrich_events` runs and `publish_enrichments` (follow-ups).
- `run`: `enrich_and_publish`, the use case the Dagster asset runs (own pool, then publish).

Nothing is imported here, so importing the pure `prompt` module loads no network library.
"""
