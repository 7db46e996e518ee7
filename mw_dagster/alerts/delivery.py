"""Delivery health of the notifier: is every channel delivering the alerts?

Contract:
- `notification_deliveries` is external: `mw notify` writes one row per queued (event, channel)
  and per delivery attempt to the PostgreSQL table of that name.
- `notification_delivery_health` (asset check, WARN) evaluates every channel found in that table:
  delivered / failed / parked / dead-lettered / pending counts and the p95 latency of delivered
  attempts, one metadata entry per channel plus a table. It fails (WARN) while a channel is
  failing: its latest attempt failed, or its circuit is open with events waiting (parked).
- The channels are the ones the notifier wrote, so the check needs no channel URL: names are the
  notifier's privacy-masked display names (Apprise ``url(privacy=True)``; the webhook without
  query or credentials) and no secret reaches Dagster.
- `delivery_health_job` runs the check; `delivery_health_schedule` every 10 minutes.
"""

from __future__ import annotations

from collections.abc import Sequence

import dagster as dg

from mw_core.adapters.postgres.notifications import ChannelCounts, delivery_counts
from mw_dagster.formatting import md_table
from mw_dagster.resources import PostgresResource

notification_deliveries = dg.AssetSpec(
    "notification_deliveries",
    group_name="alerts",
    deps=["alert_events"],
    description=(
        "Every alert event queued for every notification channel (Slack, Discord, Telegram, "
        "email, webhooks, ...) and every delivery attempt: status, HTTP status, latency, error. "
        "Written by the notifier (`mw notify`), which consumes the alerts topic; external to Dagster."
    ),
    kinds={"postgres"},
)

FAILING = ("failed", "parked")


def failing(c: ChannelCounts) -> bool:
    """A channel is failing while it is parked with a backlog or its latest attempt failed."""
    return c.parked > 0 or c.last_status in FAILING


def _state(c: ChannelCounts) -> str:
    if c.parked > 0 or c.last_status == "parked":
        return "parked"
    return "failing" if c.last_status == "failed" else "ok"


def _p95(c: ChannelCounts) -> float | None:
    return None if c.p95_latency_ms is None else round(c.p95_latency_ms, 1)


@dg.asset_check(
    asset="notification_deliveries",
    description="Every notification channel delivers: WARN while one is failing or parked.",
)
def notification_delivery_health(postgres: PostgresResource) -> dg.AssetCheckResult:
    channels = postgres.run(delivery_counts)
    bad = [c for c in channels if failing(c)]
    table = md_table(
        ["channel", "state", "delivered", "failed", "parked", "dead", "pending", "p95 latency"],
        [
            (
                c.channel_name,
                _state(c),
                c.delivered,
                c.failed,
                c.parked,
                c.dead,
                c.pending,
                "-" if c.p95_latency_ms is None else f"{c.p95_latency_ms:.0f} ms",
            )
            for c in channels
        ],
    )
    metadata: dict[str, dg.RawMetadataValue] = {
        "channels": len(channels),
        "failing": len(bad),
        "delivered": sum(c.delivered for c in channels),
        "failed": sum(c.failed for c in channels),
        "parked": sum(c.parked for c in channels),
        "dead": sum(c.dead for c in channels),
        "pending": sum(c.pending for c in channels),
        "per_channel": dg.MetadataValue.md(table),
    }
    for c in channels:
        metadata[f"channel {c.channel}"] = dg.MetadataValue.json(
            {
                "name": c.channel_name,
                "state": _state(c),
                "delivered": c.delivered,
                "failed": c.failed,
                "parked": c.parked,
                "dead": c.dead,
                "pending": c.pending,
                "p95_latency_ms": _p95(c),
            }
        )
    if not channels:
        description = "no deliveries yet (no channel configured, or no alert since)"
    elif bad:
        description = f"{len(bad)} of {len(channels)} channel(s) failing: " + ", ".join(
            f"{c.channel_name} ({_state(c)}, {c.pending} waiting)" for c in bad
        )
    else:
        description = f"all {len(channels)} channel(s) delivering"
    return dg.AssetCheckResult(
        passed=not bad,
        severity=dg.AssetCheckSeverity.WARN,
        description=description,
        metadata=metadata,
    )


def channel_checks(channels: Sequence[tuple[str, str]]) -> list[dg.AssetChecksDefinition]:
    """One check per configured channel ``(id, masked name)``: WARN while that channel fails.

    The channels come from `Settings` when the code location loads
    (`mw_core.notify.channels.describe_channels`): hashed ids and privacy-masked names only.
    """
    return [_channel_check(cid, name) for cid, name in channels]


def _channel_check(cid: str, name: str) -> dg.AssetChecksDefinition:
    @dg.asset_check(
        asset="notification_deliveries",
        name=f"delivery_health_{cid}",
        description=f"Channel {name} delivers: WARN while it is failing or parked.",
    )
    def check(postgres: PostgresResource) -> dg.AssetCheckResult:
        c = next((c for c in postgres.run(delivery_counts) if c.channel == cid), None)
        if c is None:
            return dg.AssetCheckResult(
                passed=True, description=f"{name}: no deliveries yet", metadata={"name": name, "delivered": 0}
            )
        counts = {"delivered": c.delivered, "failed": c.failed, "parked": c.parked, "dead": c.dead}
        return dg.AssetCheckResult(
            passed=not failing(c),
            severity=dg.AssetCheckSeverity.WARN,
            description=f"{name}: {_state(c)} ({c.pending} waiting)",
            metadata={
                "name": name,
                "state": _state(c),
                **counts,
                "pending": c.pending,
                "p95_latency_ms": _p95(c),
            },
        )

    return check


delivery_health_job = dg.define_asset_job(
    "delivery_health_job",
    selection=dg.AssetSelection.checks_for_assets("notification_deliveries"),
    description="Delivery health of every notification channel.",
)

delivery_health_schedule = dg.ScheduleDefinition(
    name="delivery_health_schedule",
    job=delivery_health_job,
    cron_schedule="*/10 * * * *",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Check every notification channel's delivery health every 10 minutes.",
)

defs = dg.Definitions(
    assets=[notification_deliveries],
    asset_checks=[notification_delivery_health],
    jobs=[delivery_health_job],
    schedules=[delivery_health_schedule],
)
