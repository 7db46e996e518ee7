"""`mw doctor`: connectivity checks for everything Market Watch talks to.

Each check returns a `CheckResult` and never raises: an unreachable outside source is a normal
state on machines without internet, reported plainly with what to do instead (`mw replay`).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlparse

import httpx

from mw_core.adapters import bus, db
from mw_core.config import Settings, redact_url
from mw_core.local.postgres import EmbeddedPostgres
from mw_core.local.runtime import APP_DATABASE, database_url

Status = Literal["ok", "warn", "fail"]


@dataclass(frozen=True, slots=True)
class CheckResult:
    name: str
    target: str
    status: Status
    detail: str


def _short(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:160]


async def check_database(settings: Settings, timeout: float) -> CheckResult:
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
        url = database_url(pg.url(), APP_DATABASE)
    started = time.perf_counter()
    try:
        await asyncio.wait_for(db.ping(url), timeout)
    except Exception as exc:
        return CheckResult("database", redact_url(url), "fail", _short(exc))
    return CheckResult(
        "database", redact_url(url), "ok", f"ping in {(time.perf_counter() - started) * 1000:.0f} ms"
    )


async def check_kafka(settings: Settings, timeout: float) -> CheckResult:
    if settings.kafka_bootstrap is None:
        return CheckResult(
            "kafka", "embedded", "warn", "MW_KAFKA_BOOTSTRAP unset: `mw up` starts the embedded broker"
        )
    try:
        topics = await bus.ping(settings, timeout=timeout)
    except Exception as exc:
        return CheckResult("kafka", settings.kafka_bootstrap, "fail", _short(exc))
    return CheckResult("kafka", settings.kafka_bootstrap, "ok", f"metadata ok, {len(topics)} topics")


async def check_http(name: str, url: str, timeout: float, *, hint: str) -> CheckResult:
    try:
        async with httpx.AsyncClient(timeout=timeout, follow_redirects=True) as client:
            resp = await client.get(url)
    except Exception as exc:
        return CheckResult(name, url, "warn", f"unreachable ({_short(exc)}); {hint}")
    status: Status = "ok" if resp.status_code < 400 else "warn"
    return CheckResult(name, url, status, f"HTTP {resp.status_code}")


async def check_tcp(name: str, url: str, timeout: float, *, hint: str) -> CheckResult:
    parsed = urlparse(url)
    port = parsed.port or (443 if parsed.scheme in ("wss", "https") else 80)
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(parsed.hostname, port), timeout)
    except Exception as exc:
        return CheckResult(name, url, "warn", f"unreachable ({_short(exc)}); {hint}")
    writer.close()
    return CheckResult(name, url, "ok", "TCP connect ok")


async def run_checks(settings: Settings, *, timeout: float = 5.0) -> list[CheckResult]:
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
    return list(await asyncio.gather(*checks))
