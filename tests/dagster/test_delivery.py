"""`notification_delivery_health` against the real test database with `notification_deliveries` rows.

The rows are written by the notifier's own repository (`enqueue`, `record`) for channels built by
the notifier from a URL holding a token: the check must WARN while a channel fails or is parked,
pass once it delivers again, and never show the token.
"""

from __future__ import annotations

import dagster as dg
import pytest

from mw_core.adapters.postgres import notifications as store
from mw_core.config import load_settings
from mw_core.notify.channels import Channel, build_channels, describe_channels
from mw_dagster.alerts.delivery import channel_checks, notification_deliveries, notification_delivery_health
from mw_dagster.definitions import configured_channels
from mw_dagster.resources import PostgresResource

pytestmark = pytest.mark.integration

TOKEN = "tokSECRET9x7"
HOOK_SECRET = "whsec-dagster-1"


def _channels() -> list[Channel]:
    settings = load_settings(
        _env_file=None,
        notify_urls=f"json://bot:{TOKEN}@127.0.0.1:9/alerts",
        webhook_url=f"http://127.0.0.1:9/hook?token={TOKEN}",
        webhook_secret=HOOK_SECRET,
    )
    return build_channels(settings)


def _queue(postgres: PostgresResource, ch: Channel, seqs: range) -> None:
    rows = [
        store.NewDelivery(ch.id, ch.name, f"BTCUSDT-1/{s}", f"BTCUSDT-1/{s}@{ch.id}", b"{}") for s in seqs
    ]
    postgres.run(lambda pool: store.enqueue(pool, rows))


def _attempt(postgres: PostgresResource, ch: Channel, seq: int, status: str, latency_ms: float) -> None:
    attempt = store.Attempt(
        ch.id, ch.name, f"BTCUSDT-1/{seq}", f"BTCUSDT-1/{seq}@{ch.id}", status, 1, 200, latency_ms, None
    )
    postgres.run(lambda pool: store.record(pool, attempt))


def _evaluate(postgres: PostgresResource) -> dg.AssetCheckEvaluation:
    result = dg.materialize(
        [notification_deliveries, notification_delivery_health],
        resources={"postgres": postgres},
        selection=dg.AssetSelection.all_asset_checks(),
    )
    (evaluation,) = result.get_asset_check_evaluations()
    return evaluation


def test_delivery_health_warns_while_a_channel_fails_and_masks_secrets(postgres: PostgresResource) -> None:
    empty = _evaluate(postgres)
    assert empty.passed and empty.metadata["channels"].value == 0

    chat, hook = _channels()
    _queue(postgres, chat, range(1, 5))
    _queue(postgres, hook, range(1, 5))
    for seq, latency in zip(range(1, 5), (10.0, 20.0, 30.0, 400.0), strict=True):
        _attempt(postgres, chat, seq, "delivered", latency)
    _attempt(postgres, hook, 1, "delivered", 15.0)
    _attempt(postgres, hook, 2, "failed", 5.0)
    _attempt(postgres, hook, 2, "parked", 5.0)

    warn = _evaluate(postgres)
    assert not warn.passed and warn.severity == dg.AssetCheckSeverity.WARN
    assert hook.name in (warn.description or "") and "parked" in (warn.description or "")
    meta = {k: v.value for k, v in warn.metadata.items()}
    assert meta["channels"] == 2 and meta["failing"] == 1
    assert meta["delivered"] == 5 and meta["failed"] == 2 and meta["parked"] == 3
    per_chat = meta[f"channel {chat.id}"]
    per_hook = meta[f"channel {hook.id}"]
    assert isinstance(per_chat, dict) and isinstance(per_hook, dict)
    assert per_chat["state"] == "ok" and per_chat["delivered"] == 4
    assert 300 < per_chat["p95_latency_ms"] <= 400  # p95 of 10, 20, 30, 400 ms
    assert per_hook["state"] == "parked" and per_hook["pending"] == 3
    shown = str(meta) + (warn.description or "")
    assert TOKEN not in shown and HOOK_SECRET not in shown

    # The channel recovers: its backlog is delivered, the check passes again.
    for seq in range(2, 5):
        _attempt(postgres, hook, seq, "delivered", 12.0)
    ok = _evaluate(postgres)
    assert ok.passed, ok.description
    assert ok.metadata["pending"].value == 0 and ok.metadata["parked"].value == 0


def test_one_check_per_configured_channel(postgres: PostgresResource) -> None:
    """The code location declares a check per channel of the configuration: hashed id, masked name."""
    settings = load_settings(
        _env_file=None,
        notify_urls=f"json://bot:{TOKEN}@127.0.0.1:9/alerts",
        webhook_url=f"http://127.0.0.1:9/hook?token={TOKEN}",
        webhook_secret=HOOK_SECRET,
    )
    described = describe_channels(settings)
    chat, hook = _channels()
    assert described == [(chat.id, chat.name), (hook.id, hook.name)]  # what the notifier writes
    assert configured_channels(load_settings(_env_file=None, notify_urls="[kinds=nope]json://x")) == []
    checks = channel_checks(described)
    names = [spec.key.name for c in checks for spec in c.check_specs]
    assert names == [f"delivery_health_{chat.id}", f"delivery_health_{hook.id}"]

    def evaluate() -> dict[str, dg.AssetCheckEvaluation]:
        result = dg.materialize(
            [notification_deliveries, *checks],
            resources={"postgres": postgres},
            selection=dg.AssetSelection.all_asset_checks(),
        )
        return {e.check_name: e for e in result.get_asset_check_evaluations()}

    before = evaluate()
    assert all(e.passed for e in before.values())
    _queue(postgres, chat, range(1, 3))
    _queue(postgres, hook, range(1, 3))
    _attempt(postgres, chat, 1, "delivered", 10.0)
    _attempt(postgres, hook, 1, "failed", 5.0)
    after = evaluate()
    ok, bad = after[f"delivery_health_{chat.id}"], after[f"delivery_health_{hook.id}"]
    assert ok.passed and ok.metadata["delivered"].value == 1
    assert not bad.passed and bad.severity == dg.AssetCheckSeverity.WARN and bad.metadata["failed"].value == 1
    shown = " ".join(str(e.metadata) + (e.description or "") for e in after.values()) + str(names)
    assert TOKEN not in shown and HOOK_SECRET not in shown
