"""Price ingest: Binance combined-stream websocket -> bounded buffer -> Kafka ``prices``.

Modules:
- `frames` (pure): websocket frames and REST klines -> `Tick` / control events / `BadMessage`.
- `client`: the websocket client (reconnect with full-jitter backoff, silence watchdog, rollover with
  overlap, de-duplication by ``(symbol, E)``).
- `backfill`: REST klines backfill of the gap left by a reconnect.
- `service`: `IngestService`, wiring the three to the Kafka producer.

This package's ``__init__`` imports nothing so that importing the pure parsers stays I/O-free.
"""
