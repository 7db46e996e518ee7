"""`mw doctor`: connectivity checks for everything Market Watch talks to.

Each check returns a `CheckResult` and never raises: an unreachable outside source is a normal
state on machines without internet, reported plainly with what to do instead (`mw replay`). The
command exits 1 when a check failed (a warning is not a failure).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Annotated, Literal, cast
from urllib.parse import urlparse

import typer
from rich.table import Table

from mw_core.cli.common import out, settings_or_exit
from mw_core.config import Settings, redact_url

Status = Literal["ok", "warn", "fail"]


@dataclass(frozen=True, slots=True)
class CheckResult:
    name: str
    target: str
    status: Status
    detail: str


def doctor(
    timeout: Annotated[float, typer.Option(help="Seconds per check.")] = 5.0,
) -> None:
    """Check the database, Kafka, Binance and the notification channels; print a table."""
    settings = settings_or_exit()
    results = asyncio.run(run_checks(settings, timeout=timeout))
    table = Table("check", "target", "status", "detail", title="Market Watch doctor")
    for r in results:
        colour = {"ok": "green", "warn": "yellow", "fail": "red"}[r.status]
        table.add_row(r.name, r.target, f"[{colour}]{r.status}[/{colour}]", r.detail)
    out.print(table)
    if any(r.status == "fail" for r in results):
        raise typer.Exit(1)


def _short(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:160]


# The checks import their client library when they run: `mw --help` should not pay for them.


async def check_database(settings: Settings, timeout: float) -> CheckResult:
    from mw_core.adapters.postgres.pool import ping
    from mw_core.local.pg_urls import with_database
    from mw_core.local.postgres import EmbeddedPostgres
    from mw_core.local.runtime import APP_DATABASE

    if settings.database_url is not None:
        url = settings.database_url.get_secret_value()
    else:
        pg = EmbeddedPostgres(settings.state_dir / "pg")
        if not pg.is_running():
            return CheckResult(
                "database",
                f"embedded ({pg.data_dir})",
                "warn",
                "embedded PostgreSQL not running; `mw up` starts it",
            )
        url = with_database(pg.url(), APP_DATABASE)
    started = time.perf_counter()
    try:
        await asyncio.wait_for(ping(url), timeout)
    except Exception as exc:  # doctor reports every failure instead of raising
        return CheckResult("database", redact_url(url), "fail", _short(exc))
    return CheckResult(
        "database", redact_url(url), "ok", f"ping in {(time.perf_counter() - started) * 1000:.0f} ms"
    )


async def check_kafka(settings: Settings, timeout: float) -> CheckResult:
    from mw_core.adapters import bus

    if settings.kafka_bootstrap is None:
        return CheckResult(
            "kafka", "embedded", "warn", "MW_KAFKA_BOOTSTRAP unset: `mw up` starts the embedded broker"
        )
    try:
        topics = await bus.ping(settings, timeout=timeout)
    except Exception as exc:  # doctor reports every failure instead of raising
        return CheckResult("kafka", settings.kafka_bootstrap, "fail", _short(exc))
    return CheckResult("kafka", settings.kafka_bootstrap, "ok", f"metadata ok, {len(topics)} topics")


async def check_http(name: str, url: str, timeout: float, *, hint: str) -> CheckResult:
    import httpx

    try:
        async with httpx.AsyncClient(timeout=timeout, follow_redirects=True) as client:
            resp = await client.get(url)
    except Exception as exc:  # doctor reports every failure instead of raising
        return CheckResult(name, url, "warn", f"unreachable ({_short(exc)}); {hint}")
    status: Status = "ok" if resp.status_code < 400 else "warn"
    return CheckResult(name, url, status, f"HTTP {resp.status_code}")


async def check_tcp(name: str, url: str, timeout: float, *, hint: str) -> CheckResult:
    parsed = urlparse(url)
    port = parsed.port or (443 if parsed.scheme in ("wss", "https") else 80)
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(parsed.hostname, port), timeout)
    except Exception as exc:  # doctor reports every failure instead of raising
        return CheckResult(name, url, "warn", f"unreachable ({_short(exc)}); {hint}")
    writer.close()
    return CheckResult(name, url, "ok", "TCP connect ok")


async def run_checks(settings: Settings, *, timeout: float = 5.0) -> list[CheckResult]:
    """Every check, concurrently, in table order."""
    offline = "offline? replay recorded data with `mw replay sample` / `mw up --replay sample`"
    checks = [
        check_database(settings, timeout),
        check_kafka(settings, timeout),
        check_http(
            "binance-rest", settings.binance_rest_url.rstrip("/") + "/api/v3/ping", timeout, hint=offline
        ),
        check_tcp("binance-ws", settings.binance_ws_url, timeout, hint=offline),
    ]
    for feed in settings.rss_feeds[:5]:
        checks.append(
            check_http("rss", feed, timeout, hint="headlines will be empty until feeds are reachable")
        )
    results = list(await asyncio.gather(*checks))
    return results + await check_notify_channels(settings, timeout)


async def check_notify_channels(settings: Settings, timeout: float) -> list[CheckResult]:
    """One row per notification channel (masked name): parsed, and reachable when we can tell."""
    from mw_core.notify.checks import check_channels

    if not settings.notify_urls and not settings.webhook_url:
        return [CheckResult("notify", "-", "ok", "no channels configured (MW_NOTIFY_URLS, MW_WEBHOOK_URL)")]
    return [
        CheckResult(
            f"notify #{c.position}" if c.position else "notify", c.name, cast(Status, c.status), c.detail
        )
        for c in await check_channels(settings, timeout=timeout)
    ]
