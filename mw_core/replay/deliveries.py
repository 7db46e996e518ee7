"""The notifier inside `mw replay`: deliver the replayed day's alert events, then report.

Contract:
- `notifying(settings)` is true when channels are configured (``MW_NOTIFY_URLS`` or
  ``MW_WEBHOOK_URL``); only then does `mw replay` run a `NotifyService`.
- `replay_settings(settings, suffix)` gives the run its own alerts topic and notifier group: the
  run's processor publishes there and the run's notifier reads it from the start, so the
  notifier sees exactly this run's events (no history of the shared topic, no race with the
  notifier of a running `mw up`).
- `settle(notifier, pool, events, published=...)` returns once every replayed episode event has
  reached a final delivery state on every channel whose route accepts it: ``delivered`` or
  ``dead`` (dead-lettered) in `notification_deliveries`, or its channel is parked (circuit open;
  the backlog stays queued for the next notifier). Events a previous replay into the same
  database published already (so this run's processor did not publish them) and that a channel
  never queued are produced to the run's topic first. Nothing is sent twice: queueing is
  deduplicated per (event, channel) key.
- `summary(notifier)` is the per-channel result (masked names) for ``mw replay --json``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import asyncpg

from mw_core.adapters import bus
from mw_core.adapters.postgres import notifications as store
from mw_core.config import Settings
from mw_core.markets import codec
from mw_core.markets.episodes import EpisodeEvent
from mw_core.notify.channels import idempotency_key
from mw_core.notify.messages import Alert, decode_alert
from mw_core.notify.service import NotifyService


def notifying(settings: Settings) -> bool:
    """True when at least one channel is configured."""
    return bool(settings.notify_urls or settings.webhook_url)


def replay_settings(settings: Settings, suffix: str) -> Settings:
    """The run's own alerts topic and notifier group (see the module docstring)."""
    return settings.model_copy(
        update={
            "topic_alerts": f"{settings.topic_alerts}-replay-{suffix}",
            "notify_group": f"{settings.notify_group}-replay-{suffix}",
        }
    )


async def _until(predicate: Callable[[], Awaitable[bool]], *, deadline: float, what: str) -> None:
    while not await predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"replay: timed out waiting for {what}")
        await asyncio.sleep(0.05)


def _routed(notifier: NotifyService, alert: Alert) -> list[tuple[str, str]]:
    """(channel id, delivery key) of every channel whose route accepts `alert`."""
    return [
        (ch.id, idempotency_key(alert, ch.id))
        for ch in notifier.channels
        if ch.route.accepts(symbol=alert.symbol, kind=alert.kind, ret=alert.ret)
    ]


async def _produce(settings: Settings, records: Sequence[tuple[bytes, bytes]]) -> None:
    producer = bus.producer(settings)
    await producer.start()
    try:
        for key, value in records:
            await producer.send_and_wait(settings.topic_alerts, value, key=key)
    finally:
        await producer.stop()


async def settle(
    notifier: NotifyService,
    pool: asyncpg.Pool,
    events: Sequence[EpisodeEvent],
    *,
    published: int,
    timeout: float,
) -> None:
    """Wait until every event is final (or parked) on every routed channel; see module docstring."""
    deadline = time.monotonic() + timeout

    async def consumed(n: int) -> bool:
        return notifier.consumed >= n

    await _until(lambda: consumed(published), deadline=deadline, what="the notifier to read the alerts")
    routed: list[tuple[tuple[bytes, bytes], list[tuple[str, str]]]] = []
    for event in events:
        record = codec.encode_event(event)
        alert = decode_alert(record[1])
        if alert is not None:
            routed.append((record, _routed(notifier, alert)))
    keys = [key for _, pairs in routed for _, key in pairs]
    queued = await store.queued_keys(pool, keys)
    missing = [record for record, pairs in routed if any(key not in queued for _, key in pairs)]
    if missing:  # published by an earlier replay into this database: never on this run's topic
        await _produce(notifier.settings, missing)
        total = published + len(missing)
        await _until(lambda: consumed(total), deadline=deadline, what="the notifier to read the alerts")
    channel_of = {key: cid for _, pairs in routed for cid, key in pairs}

    async def final() -> bool:
        done = await store.final_keys(pool, keys)
        return all(
            key in done or notifier.workers[cid].breaker.state != "closed" for key, cid in channel_of.items()
        )

    await _until(final, deadline=deadline, what="every alert to reach a final delivery state")


def summary(notifier: NotifyService) -> list[dict[str, Any]]:
    """Per channel (masked name): delivered / failed / parked / dead / backlog and circuit state."""
    return [{"channel": name, **counts} for name, counts in notifier.stats().items()]
