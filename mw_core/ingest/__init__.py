"""Price ingest: Binance combined-stream websocket -> bounded buffer -> Kafka ``prices``.

Modules:
- `client`: the websocket client (reconnect with full-jitter backoff, silence watchdog, rollover with
  overlap, de-duplication by ``(symbol, E)``).
- `backfill`: REST klines backfill of the gap left by a reconnect.
- `service`: `IngestService`, wiring the client and the backfill to the Kafka producer.

The frame and klines parsers are pure and live in the markets room (`mw_core.markets.frames`).
"""
