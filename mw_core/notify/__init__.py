"""The notifier (`mw notify`): alert events from the `alerts` topic to people and machines.

Modules:
- `routing` (pure): `MW_NOTIFY_URLS` syntax, channels with routing filters.
- `messages` (pure): decoding `alerts` records, per-target rendering that keeps hostile text inert.
- `limits` (pure): token bucket and circuit breaker.
- `channels`: Apprise channels and our signed webhook (one attempt per `send`).
- `worker`: one channel's ordered, rate-limited, retried delivery loop.
- `service`: `NotifyService` (consumer group, pending state, DLQ, health, stats).
- `checks`: `send_test` (`mw notify test`) and `check_channels` (`mw doctor`).
"""
