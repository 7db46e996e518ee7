"""The notifier end to end with real local servers: broker, PostgreSQL, HTTP receivers, SMTP.

Channels: our signed webhook, Apprise ``json://`` and ``ntfy://`` to local HTTP receivers, and
Apprise ``mailto://`` to a local aiosmtpd server (plain SMTP, ``mode=insecure``).
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable
from typing import Any

import asyncpg
import orjson
import pytest

from mw_core.adapters.postgres import notifications as store
from mw_core.adapters.postgres.pool import create_pool
from mw_core.config import Settings
from mw_core.notify.service import NotifyService
from tests.fakes.smtp import SmtpServer
from tests.fakes.webhook import Ok, Receiver, Status
from tests.integration.notify.conftest import (
    JSON_TOKEN,
    WEBHOOK_SECRET,
    dlq_values,
    enrichment,
    episode,
    produce,
    until,
)

pytestmark = pytest.mark.integration

HOSTILE = "@everyone <!channel> [win](http://evil.example/x) <b>bold</b> **md** \u202e\u0007 tg://x"


async def delivered_rows(settings: Settings) -> list[asyncpg.Record]:
    assert settings.database_url is not None
    pool = await create_pool(settings.database_url.get_secret_value(), max_size=1)
    try:
        return list(
            await pool.fetch(
                "SELECT channel, idempotency_key, event_key FROM notification_deliveries "
                "WHERE status = 'delivered' ORDER BY id"
            )
        )
    finally:
        await pool.close()


async def test_open_escalate_close_and_follow_up_reach_every_channel(
    notify_settings: Callable[..., Settings],
    webhook: Receiver,
    json_receiver: Receiver,
    ntfy_receiver: Receiver,
    smtp: SmtpServer,
    running: Callable[[Any], Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    urls = ",".join(
        [
            f"json://user:{JSON_TOKEN}@127.0.0.1:{json_receiver.port}/alerts",
            f"[kinds=open|escalate|close|summary]ntfy://127.0.0.1:{ntfy_receiver.port}/mw-alerts",
            smtp.url(to="ops@example.com,desk@example.com"),
            f"[symbols=ETHUSDT]json://127.0.0.1:{json_receiver.port}/eth-only",
        ]
    )
    settings = notify_settings(
        notify_urls=urls,
        webhook_url=webhook.url + "/mw",
        webhook_secret=WEBHOOK_SECRET,
        public_dagster_url="http://127.0.0.1:3000",
    )
    await produce(
        settings,
        [
            episode(1, "open"),
            b'{"type": "heartbeat"}',
            b"{not json",
            episode(2, "escalate", ret=-0.09),
            enrichment(1, HOSTILE),
            episode(3, "close", summary="peak -9.0% over 42 min " + HOSTILE),
        ],
    )
    service = NotifyService(settings, backoff_base_s=0.01)
    running(service)
    await until(lambda: len(webhook.ok_requests()) == 4, what="webhook deliveries")
    await until(lambda: len(json_receiver.ok_requests()) == 4 and len(ntfy_receiver.ok_requests()) == 4)
    await until(lambda: len(smtp.messages) == 8, what="emails (Apprise sends one per recipient)")

    # Webhook: signed, keyed, in order, the event as body.
    hooks = webhook.ok_requests()
    assert all(r.signature_ok for r in hooks)
    assert [r.json()["seq"] for r in hooks] == [1, 2, 1, 3]
    assert [r.json()["type"] for r in hooks] == ["episode", "episode", "enrichment", "episode"]
    keys = [r.key for r in hooks]
    assert len(set(keys)) == 4 and keys[0] is not None and keys[0].startswith("BTCUSDT-1722820079999/1@")
    assert {"symbol", "kind", "ts", "episode_id", "seq", "window_s", "ret", "direction", "price"} <= set(
        hooks[0].json()
    )
    # Apprise json://: the routed channel only (the ETHUSDT-only one got nothing).
    assert {r.path for r in json_receiver.ok_requests()} == {"/alerts"}
    messages = [r.json()["message"] for r in json_receiver.ok_requests()]
    assert "BTCUSDT fell 5.00% in 5 min to 58,000.5" in messages[0]
    assert "Open in Dagster: http://127.0.0.1:3000" in messages[0]
    # Hostile follow-up text arrives inert (plain text target, ntfy, email HTML).
    for text in [messages[2], ntfy_receiver.ok_requests()[2].json()["message"]]:
        assert "@everyone" not in text and "<!channel>" not in text and "http://evil" not in text
        assert "\u202e" not in text and "\u0007" not in text
    summary_mail = next(m for m in smtp.messages if "summary" in str(m["Subject"]))
    email_html = summary_mail.get_body(("html",))
    assert email_html is not None
    html_text = email_html.get_content()
    assert "<b>bold</b>" not in html_text and "&lt;b&gt;bold&lt;/b&gt;" in html_text
    assert 'href="http://evil' not in html_text
    assert {str(m["To"]) for m in smtp.messages} == {"desk@example.com", "ops@example.com"}

    # Bookkeeping: one delivered row per (event, channel); malformed record dead-lettered.
    await until(lambda: all(w.backlog == 0 for w in service.workers.values()))
    rows = await delivered_rows(settings)
    assert len(rows) == 16 and len({r["idempotency_key"] for r in rows}) == 16
    assert service.malformed == 1 and service.ignored == 1
    dlq = await dlq_values(settings, want=1)
    assert dlq[0]["reason"] == "malformed_json" and dlq[0]["source"].startswith("notify:")
    stats = service.stats()
    assert sum(s["delivered"] for s in stats.values()) == 16
    assert all(s["parked"] == 0 and s["circuit"] == "closed" for s in stats.values())

    # No secret in logs, stats or health.
    shown = caplog.text + repr(stats) + orjson.dumps(service.health(), default=str).decode()
    assert WEBHOOK_SECRET not in shown and JSON_TOKEN not in shown


async def test_429_storm_honours_retry_after(
    notify_settings: Callable[..., Settings], webhook: Receiver, running: Callable[[Any], Any]
) -> None:
    settings = notify_settings(
        webhook_url=webhook.url, webhook_secret=WEBHOOK_SECRET, notify_circuit_failures=20
    )
    webhook.script.extend([Status(429, retry_after=1.0)] * 3)
    await produce(settings, [episode(1, "open")])
    service = NotifyService(settings, backoff_base_s=0.01, backoff_cap_s=0.02)
    running(service)
    await until(lambda: len(webhook.ok_requests()) == 1, timeout=20, what="delivery after the storm")
    times = [r.at for r in webhook.requests]
    assert [r.status for r in webhook.requests] == [429, 429, 429, 200]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert all(g >= 0.95 for g in gaps), gaps  # the jittered backoff alone would be <= 0.02 s
    assert len({r.key for r in webhook.requests}) == 1  # the same key on every retry


async def test_outage_parks_the_channel_then_delivers_the_backlog_in_order(
    notify_settings: Callable[..., Settings],
    webhook: Receiver,
    json_receiver: Receiver,
    running: Callable[[Any], Any],
) -> None:
    """A 3 s outage (the issue's 60 s works the same way: the breaker probes every open_s)."""
    settings = notify_settings(
        notify_urls=f"json://127.0.0.1:{json_receiver.port}/ok",
        webhook_url=webhook.url,
        webhook_secret=WEBHOOK_SECRET,
        notify_circuit_failures=3,
        notify_circuit_open_s=0.5,
    )
    webhook.default = Status(500)
    await produce(settings, [episode(i, "open" if i == 1 else "escalate") for i in range(1, 7)])
    service = NotifyService(settings, backoff_base_s=0.01, backoff_cap_s=0.05)
    running(service)
    hook = next(w for w in service.workers.values() if w.channel.name.startswith("webhook"))
    await until(lambda: hook.parked == 6 and hook.breaker.state != "closed", what="parked channel")
    # The healthy channel is not held back by the parked one.
    await until(lambda: len(json_receiver.ok_requests()) == 6, what="json channel during the outage")
    stats = service.stats()[hook.channel.name]
    assert stats["parked"] == 6 and stats["delivered"] == 0
    failures_during_outage = len(webhook.requests)
    await until(lambda: len(webhook.requests) >= failures_during_outage + 2, what="half-open probes")
    # Probes, not a hammer: ~1 request per open_s while parked.
    assert len(webhook.requests) < failures_during_outage + 12
    webhook.default = Ok()
    await until(lambda: len(webhook.ok_requests()) == 6, timeout=30, what="backlog delivered")
    assert [r.json()["seq"] for r in webhook.ok_requests()] == [1, 2, 3, 4, 5, 6]
    assert webhook.duplicates() == []
    assert service.stats()[hook.channel.name]["circuit"] == "closed"
    assert settings.database_url is not None
    pool = await create_pool(settings.database_url.get_secret_value(), max_size=1)
    try:
        counts = {c.channel_name: c for c in await store.delivery_counts(pool)}
        assert counts[hook.channel.name].delivered == 6 and counts[hook.channel.name].pending == 0
        parked = await pool.fetchval("SELECT count(*) FROM notification_deliveries WHERE status = 'parked'")
        assert parked >= 1
    finally:
        await pool.close()


async def test_attempts_exhausted_and_rejected_events_go_to_the_dlq(
    notify_settings: Callable[..., Settings], webhook: Receiver, running: Callable[[Any], Any]
) -> None:
    settings = notify_settings(
        webhook_url=webhook.url,
        webhook_secret=WEBHOOK_SECRET,
        notify_max_attempts=3,
        notify_circuit_failures=20,
    )
    webhook.script.extend([Status(500)] * 3 + [Status(422)])
    await produce(settings, [episode(1, "open"), episode(2, "escalate"), episode(3, "escalate")])
    service = NotifyService(settings, backoff_base_s=0.01, backoff_cap_s=0.02)
    running(service)
    await until(lambda: len(webhook.ok_requests()) == 1, what="third event delivered")
    letters = await dlq_values(settings, want=2)
    assert sorted(d["reason"] for d in letters) == ["notify_attempts_exhausted", "notify_rejected"]
    assert all(WEBHOOK_SECRET not in orjson.dumps(d).decode() for d in letters)
    assert orjson.loads(letters[0]["raw"])["type"] == "episode"
    assert [r.json()["seq"] for r in webhook.ok_requests()] == [3]


async def test_restart_mid_stream_delivers_each_event_once_per_channel(
    notify_settings: Callable[..., Settings],
    webhook: Receiver,
    json_receiver: Receiver,
    running: Callable[[Any], Any],
) -> None:
    settings = notify_settings(
        notify_urls=f"json://127.0.0.1:{json_receiver.port}/ok",
        webhook_url=webhook.url,
        webhook_secret=WEBHOOK_SECRET,
        notify_rate_per_min=600.0,  # 10/s after a burst of 5: the restart lands mid-stream
        notify_burst=5,
    )
    n = 30
    await produce(settings, [episode(i, "open" if i == 1 else "escalate") for i in range(1, n + 1)])
    first = NotifyService(settings, backoff_base_s=0.01)
    task = running(first)
    await until(lambda: len(webhook.ok_requests()) >= 8, what="first deliveries")
    first.stop()
    await task
    assert len(webhook.ok_requests()) < n  # really stopped mid-stream
    second = NotifyService(settings, backoff_base_s=0.01)
    running(second)
    await until(
        lambda: len(webhook.ok_requests()) == n and len(json_receiver.ok_requests()) == n,
        timeout=40,
        what="all deliveries after the restart",
    )
    assert webhook.duplicates() == [] and json_receiver.duplicates() == []
    assert [r.json()["seq"] for r in webhook.ok_requests()] == list(range(1, n + 1))
    rows = await delivered_rows(settings)
    assert len(rows) == 2 * n and len({r["idempotency_key"] for r in rows}) == 2 * n
