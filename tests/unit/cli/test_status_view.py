"""The status table of `mw up` / `mw status`."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.unit


def test_render_status_shows_components_and_urls() -> None:
    from rich.console import Console

    from mw_core.cli.status_view import render_status

    status = {
        "running": True,
        "meta": {
            "dagster_url": "http://127.0.0.1:3000",
            "database_url": "postgresql://u:***@db/marketwatch",
            "kafka_bootstrap": "127.0.0.1:9092",
            "startup_s": 9.5,
        },
        "components": [
            {"component": "postgres", "state": "running", "address": "db", "pid": 42, "restarts": 1},
        ],
        "events": [{"ts": "t", "component": "postgres", "event": "restart #1"}],
    }
    console = Console(record=True, width=200)
    console.print(render_status(status, banners=["price source x: OK"]))
    text = console.export_text()
    for needle in ("postgres", "running", "42", "http://127.0.0.1:3000", "u:***@db", "9.5s", "restart #1"):
        assert needle in text


def test_status_shows_the_broker_memory_and_rollovers() -> None:
    from rich.console import Console

    from mw_core.cli.status_view import broker_memory, render_status

    kafka = {
        "component": "kafka",
        "state": "running",
        "rss_mb": 41.4,
        "max_memory_mb": 256,
        "rollovers": 2,
        "last_rollover": {"at": "t", "pause_s": 1.26, "reason": "RSS"},
    }
    assert broker_memory([kafka]) == " 41 MB of 256 MB cap; 2 rollovers (last paused producers 1.3s)"
    assert broker_memory([{"component": "kafka", "state": "external"}]) == ""
    console = Console(record=True, width=200)
    console.print(render_status({"running": True, "meta": {}, "components": [kafka], "events": []}))
    assert "broker memory 41 MB of 256 MB cap; 2 rollovers" in console.export_text()


def test_status_shows_delivery_counts_per_notification_channel() -> None:
    from rich.console import Console

    from mw_core.cli.status_view import render_status

    status = {
        "running": True,
        "meta": {},
        "components": [{"component": "notify", "state": "running", "address": "", "pid": 7}],
        "notifications": [
            {
                "channel_name": "json://u...r:****@127.0.0.1:9/alerts",
                "delivered": 41,
                "failed": 3,
                "parked": 0,
                "dead": 1,
                "pending": 0,
                "p95_latency_ms": 18.4,
            },
            {
                "channel_name": "webhook http://127.0.0.1:9/***",
                "delivered": 40,
                "failed": 7,
                "parked": 5,
                "dead": 0,
                "pending": 5,
                "p95_latency_ms": None,
            },
        ],
    }
    console = Console(record=True, width=200)
    console.print(render_status(status))
    text = console.export_text()
    assert "notifications" in text and "parked" in text
    rows = {line.split("│")[1].strip(): line for line in text.splitlines() if line.count("│") >= 7}
    hook = rows["webhook http://127.0.0.1:9/***"]
    assert [c.strip() for c in hook.split("│")[2:8]] == ["40", "7", "5", "0", "5", "-"]
    assert "18 ms" in rows["json://u...r:****@127.0.0.1:9/alerts"]
