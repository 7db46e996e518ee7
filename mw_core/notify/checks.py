"""`mw notify test` and `mw doctor` support: one test message per channel, reachability probes.

Contract:
- `send_test(settings, channel_index=None)` sends one recognisable test alert (symbol
  ``MWTEST``) through each configured channel (or only channel `channel_index`, 1-based, in
  `build_channels` order) with ONE attempt and no database or Kafka; returns a `TestResult`
  per channel. Names are privacy-masked; errors never contain a URL.
- `check_channels(settings)` parses every channel (a URL Apprise does not understand fails) and
  opens a TCP connection to the endpoints we know without guessing: the webhook, Apprise's
  self-hosted ``json`` / ``xml`` / ``form`` / ``ntfy`` servers and the SMTP host of ``mailto``.
  Hosted services (Slack, Discord, Telegram, ...) are reported as configured, not probed: their
  host is fixed by Apprise and their URL's "host" is often a token.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import apprise

from mw_core.config import Settings
from mw_core.notify.channels import ChannelConfigError, WebhookChannel, build_channels
from mw_core.notify.messages import sample_alert
from mw_core.notify.routing import RoutingError, describe, parse_channels

_PROBED_SCHEMES = {"json": 80, "jsons": 443, "xml": 80, "xmls": 443, "form": 80, "forms": 443}


@dataclass(frozen=True, slots=True)
class TestResult:
    position: int
    name: str
    route: str
    ok: bool
    latency_ms: float
    http_status: int | None
    error: str | None


@dataclass(frozen=True, slots=True)
class ChannelCheck:
    position: int
    name: str
    status: str  # ok / warn / fail
    detail: str


async def send_test(settings: Settings, channel_index: int | None = None) -> list[TestResult]:
    """Send one test alert through each channel (or channel `channel_index`, 1-based)."""
    channels = build_channels(settings)
    if channel_index is not None:
        if not 1 <= channel_index <= len(channels):
            raise ChannelConfigError(f"no channel {channel_index}: {len(channels)} channel(s) configured")
        channels = [channels[channel_index - 1]]
    alert = sample_alert(now_ms=int(time.time() * 1000))
    results: list[TestResult] = []
    try:
        for ch in channels:
            outcome = await ch.send(alert, f"{alert.key}@{ch.id}")
            results.append(
                TestResult(
                    ch.position,
                    ch.name,
                    describe(ch.route),
                    outcome.ok,
                    outcome.latency_ms,
                    outcome.http_status,
                    outcome.error,
                )
            )
    finally:
        for ch in channels:
            await ch.close()
    return results


def _endpoint(url: str) -> tuple[str, int] | None:
    """(host, port) worth a TCP probe, None for hosted services."""
    scheme = urlsplit(url).scheme.lower()
    if scheme in ("http", "https"):
        parts = urlsplit(url)
        return (parts.hostname or "", parts.port or (443 if scheme == "https" else 80))
    plugin = apprise.Apprise.instantiate(url)
    if plugin is None:
        return None
    host = getattr(plugin, "smtp_host", None) or getattr(plugin, "host", None)
    port = getattr(plugin, "port", None)
    if scheme in ("mailto", "mailtos") or scheme in _PROBED_SCHEMES:
        default = 25 if scheme == "mailto" else 465 if scheme == "mailtos" else _PROBED_SCHEMES[scheme]
        return (str(host), int(port or default)) if host else None
    if scheme in ("ntfy", "ntfys") and getattr(plugin, "host", None):
        return (str(host), int(port or (443 if scheme == "ntfys" else 80)))
    return None


async def _probe(host: str, port: int, timeout: float) -> str | None:
    """None when a TCP connection opens, else the error type."""
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except (OSError, TimeoutError) as exc:
        return type(exc).__name__
    writer.close()
    return None


async def check_channels(settings: Settings, *, timeout: float = 5.0) -> list[ChannelCheck]:
    """Parse every channel and probe the reachable-by-us ones (see the module docstring)."""
    try:
        channels = build_channels(settings)
    except (ChannelConfigError, RoutingError) as exc:
        return [ChannelCheck(0, "MW_NOTIFY_URLS", "fail", str(exc))]
    raw = settings.notify_urls.get_secret_value() if settings.notify_urls else ""
    urls = [spec.url for spec in parse_channels(raw)]
    if settings.webhook_url:
        urls.append(settings.webhook_url)
    out: list[ChannelCheck] = []
    for ch, url in zip(channels, urls, strict=True):
        kind = "webhook" if isinstance(ch, WebhookChannel) else "apprise"
        endpoint = _endpoint(url)
        if endpoint is None:
            out.append(
                ChannelCheck(ch.position, ch.name, "ok", f"{kind}: configured (hosted service, not probed)")
            )
            continue
        error = await _probe(*endpoint, timeout)
        if error is None:
            out.append(
                ChannelCheck(ch.position, ch.name, "ok", f"{kind}: {endpoint[0]}:{endpoint[1]} reachable")
            )
        else:
            out.append(
                ChannelCheck(ch.position, ch.name, "fail", f"{kind}: {endpoint[0]}:{endpoint[1]} {error}")
            )
        await ch.close()
    return out
