"""`mw replay` with channels: the real crash day's alerts reach a local signed webhook, once.

The replay runs the real ingest, broker, processor and notifier; the receivers are the notifier
tests' local HTTP servers (our signed webhook, and Apprise ``json://``; see this folder's conftest). `run_replay` returns only after every
alert event is final on every channel.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from mw_core.config import Settings
from mw_core.notify.channels import channel_id
from mw_core.replay.run import run_replay
from tests.conftest import FIXTURES
from tests.fakes.webhook import Receiver
from tests.integration.notify.conftest import WEBHOOK_SECRET

pytestmark = pytest.mark.integration

SECRET = WEBHOOK_SECRET
CRASH_DAY = str(FIXTURES / "BTCUSDT-1m-2024-08-05.csv")


def test_replayed_crash_day_alerts_all_arrive_signed_once(
    make_settings: Callable[..., Settings], webhook: Receiver, json_receiver: Receiver
) -> None:
    hook_url = webhook.url + "/mw"
    settings = make_settings(
        webhook_url=hook_url,
        webhook_secret=SECRET,
        notify_urls=f"json://127.0.0.1:{json_receiver.port}/alerts",
        notify_rate_per_min=6000.0,
        notify_burst=100,
    )
    result = run_replay(settings, [CRASH_DAY])

    # Returned only once every event is final: nothing arrives after run_replay.
    events = {(a["episode_id"], a["seq"]) for a in result.alerts}
    assert events, "the crash day raises alerts"
    hook_id = channel_id(hook_url)
    expected_keys = {f"{eid}/{seq}@{hook_id}" for eid, seq in events}
    received = webhook.ok_requests()
    assert {r.key for r in received} == expected_keys
    assert webhook.duplicates() == [] and len(received) == len(events)
    assert all(r.signature_ok for r in webhook.requests)
    bodies = {(r.json()["episode_id"], r.json()["seq"]) for r in received}
    assert bodies == events
    first = min(received, key=lambda r: r.at).json()
    assert first["kind"] == "open" and first["symbol"] == "BTCUSDT" and first["direction"] == "down"
    assert len(json_receiver.ok_requests()) == len(events)  # the Apprise channel got each one too

    assert result.notifications is not None
    by_name = {c["channel"]: c for c in result.notifications}
    assert by_name[f"webhook http://127.0.0.1:{webhook.port}/***"]["delivered"] == len(events)
    assert all(c["backlog"] == 0 and c["dead"] == 0 for c in result.notifications)
    assert "notifications" in result.as_json()

    # A second replay into the same database publishes nothing new: nothing is sent twice.
    again = run_replay(settings, [CRASH_DAY])
    assert {(a["episode_id"], a["seq"]) for a in again.alerts} == events
    assert len(webhook.requests) == len(received)
    assert webhook.duplicates() == []


def test_channels_added_after_a_replay_still_get_its_alerts(
    make_settings: Callable[..., Settings], webhook: Receiver
) -> None:
    """Replayed first without channels (events published, never queued), then with a webhook:
    the processor publishes nothing new, so the replay hands the stored events to the notifier."""
    quiet = run_replay(make_settings(), [CRASH_DAY])
    assert quiet.notifications is None and "notifications" not in quiet.as_json()
    events = {(a["episode_id"], a["seq"]) for a in quiet.alerts}
    assert events

    settings = make_settings(webhook_url=webhook.url, webhook_secret=SECRET)
    result = run_replay(settings, [CRASH_DAY])
    received = webhook.ok_requests()
    assert {(r.json()["episode_id"], r.json()["seq"]) for r in received} == events
    assert len(received) == len(events) and webhook.duplicates() == []
    assert all(r.signature_ok for r in received)
    assert result.notifications is not None and result.notifications[0]["delivered"] == len(events)
