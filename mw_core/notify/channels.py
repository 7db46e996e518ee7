"""Delivery channels: Apprise URLs (chat, email, push, ...) and our signed JSON webhook.

Contract:
- `build_channels(settings)` returns the configured channels in order: the Apprise URLs of
  `MW_NOTIFY_URLS` (position 1..n), then the webhook of `MW_WEBHOOK_URL` when set. A URL Apprise
  does not understand, or a webhook without `MW_WEBHOOK_SECRET`, raises `ChannelConfigError`
  naming the channel by position, never by URL.
- Each channel has a stable `id` (a short hash of its URL: the delivery key survives restarts
  and reordering, and reveals nothing of the token), a display `name` with secrets masked
  (Apprise's own ``url(privacy=True)``; the webhook without query or userinfo) and its `route`.
- ``await channel.send(alert, key)`` makes ONE attempt and returns an `Outcome`; it never raises
  for delivery errors. The message is rendered in the channel's native format (Apprise plugin's
  primary format: markdown / html / text) and handed over in that format so Apprise converts
  nothing but its own dialect (CommonMark -> Slack mrkdwn / Telegram MarkdownV2 / Discord).
  Apprise is synchronous: a send runs in a worker thread, bounded by `timeout_s`.
- Webhook: ``POST`` of the record's JSON body with ``X-MW-Signature: sha256=<hex HMAC-SHA256 of
  the raw body>`` and ``Idempotency-Key: <event key>@<channel id>``. 2xx delivered; 429 and
  408/425/5xx and transport errors are transient (``Retry-After`` read on 429/503); any other
  4xx is `permanent` (retrying the same request cannot help).
- Our token bucket is the channel's one rate limit, so Apprise's fixed per-plugin pause between
  two requests is switched off.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from dataclasses import dataclass
from typing import Protocol, cast
from urllib.parse import urlsplit, urlunsplit

import apprise
import httpx

from mw_core.adapters.retry import parse_retry_after
from mw_core.config import Settings
from mw_core.notify.messages import Alert, Format, render
from mw_core.notify.routing import ChannelSpec, Route, parse_channels

SIGNATURE_HEADER = "X-MW-Signature"
IDEMPOTENCY_HEADER = "Idempotency-Key"
_TRANSIENT_HTTP = frozenset({408, 425, 429})
_MACHINE_SCHEMES = frozenset({"json", "xml", "form"})


class ChannelConfigError(ValueError):
    """A channel cannot be built from the configuration (message never contains the URL)."""


@dataclass(frozen=True, slots=True)
class Outcome:
    """The result of one delivery attempt."""

    ok: bool
    latency_ms: float
    http_status: int | None = None
    error: str | None = None
    retry_after_s: float | None = None
    permanent: bool = False


class Channel(Protocol):
    id: str
    name: str
    route: Route
    position: int

    async def send(self, alert: Alert, key: str) -> Outcome: ...

    async def close(self) -> None: ...


def channel_id(url: str) -> str:
    """Stable short id of a channel URL (a hash: survives restarts, reveals nothing)."""
    return hashlib.sha256(url.encode()).hexdigest()[:12]


def sign(body: bytes, secret: str) -> str:
    """``sha256=<hex HMAC-SHA256 of body>``, the value of `SIGNATURE_HEADER` (GitHub's scheme)."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def idempotency_key(alert: Alert, channel: str) -> str:
    """Stable per (event, channel): ``<episode_id>/<seq>[/summary]@<channel id>``."""
    return f"{alert.key}@{channel}"


def _ms_since(start: float) -> float:
    return round((time.perf_counter() - start) * 1000.0, 3)


class AppriseChannel:
    """One Apprise URL; one plugin instance (keeps the plugin's own rate-limit memory)."""

    def __init__(
        self, spec: ChannelSpec, *, position: int, dagster_url: str | None, timeout_s: float = 15.0
    ) -> None:
        asset = apprise.AppriseAsset(secure_logging=True)
        plugin = _plugin(spec, position, asset)
        plugin.request_rate_per_sec = 0  # our token bucket paces the channel
        self._apprise = apprise.Apprise(asset=asset)
        self._apprise.add(plugin)
        self.id = channel_id(spec.url)
        self.name = str(plugin.url(privacy=True))  # type: ignore[no-untyped-call]
        self.route = spec.route
        self.position = position
        self.format = native_format(plugin)
        self._dagster_url = dagster_url
        self._timeout_s = timeout_s

    async def send(self, alert: Alert, key: str) -> Outcome:
        title, body = render(alert, self.format, dagster_url=self._dagster_url)
        start = time.perf_counter()
        result = await asyncio.to_thread(
            self._apprise.notify, body=body, title=title, body_format=self.format, timeout=self._timeout_s
        )
        if result:
            return Outcome(ok=True, latency_ms=_ms_since(start))
        return Outcome(ok=False, latency_ms=_ms_since(start), error=f"apprise: {result.status.name.lower()}")

    async def close(self) -> None:
        return None


def native_format(plugin: apprise.plugins.NotifyBase) -> Format:
    """The format rendered for a plugin: markdown when it speaks it (Apprise then translates
    CommonMark to the service's dialect; Discord renders markdown even in "text"), else HTML
    (email), else plain text. Machine payloads (``json`` / ``xml`` / ``form``) get plain text. A
    ``?format=`` in the URL wins (Apprise's `resolve_format`)."""
    declared = plugin.notify_format
    formats = {
        str(getattr(f, "value", f)) for f in (declared if isinstance(declared, tuple | list) else [declared])
    }
    if getattr(plugin, "protocol", None) in _MACHINE_SCHEMES:
        wanted = "text"
    else:
        wanted = "markdown" if "markdown" in formats else "html" if "html" in formats else "text"
    return cast(Format, str(plugin.resolve_format(wanted).value))


def _display_url(url: str) -> str:
    """Scheme, host and port only: the path of a webhook URL often carries its token."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, "/***" if parts.path.strip("/") else "", "", ""))


class WebhookChannel:
    """Our signed JSON webhook (httpx)."""

    def __init__(self, url: str, secret: str, *, position: int, timeout_s: float = 10.0) -> None:
        self._url = url
        self._secret = secret
        self.id = channel_id(url)
        self.name = "webhook " + _display_url(url)
        self.route = Route()
        self.position = position
        self._client = httpx.AsyncClient(timeout=timeout_s, follow_redirects=False)

    def headers(self, body: bytes, key: str) -> dict[str, str]:
        return {
            "Content-Type": "application/json",
            "User-Agent": "market-watch-notify",
            SIGNATURE_HEADER: sign(body, self._secret),
            IDEMPOTENCY_HEADER: key,
        }

    async def send(self, alert: Alert, key: str) -> Outcome:
        body = alert.raw
        start = time.perf_counter()
        try:
            response = await self._client.post(self._url, content=body, headers=self.headers(body, key))
        except httpx.TransportError as exc:  # refused, reset, timed out: transient by type
            return Outcome(ok=False, latency_ms=_ms_since(start), error=type(exc).__name__)
        code = response.status_code
        if 200 <= code < 300:
            return Outcome(ok=True, latency_ms=_ms_since(start), http_status=code)
        retry_after = parse_retry_after(response.headers) if code in (429, 503) else None
        return Outcome(
            ok=False,
            latency_ms=_ms_since(start),
            http_status=code,
            error=f"HTTP {code}",
            retry_after_s=retry_after,
            permanent=400 <= code < 500 and code not in _TRANSIENT_HTTP,
        )

    async def close(self) -> None:
        await self._client.aclose()


def _plugin(spec: ChannelSpec, position: int, asset: apprise.AppriseAsset) -> apprise.plugins.NotifyBase:
    plugin = apprise.Apprise.instantiate(spec.url, asset=asset)
    if plugin is None:
        raise ChannelConfigError(f"MW_NOTIFY_URLS channel {position}: Apprise does not understand this URL")
    return plugin


def describe_channels(settings: Settings) -> list[tuple[str, str]]:
    """``(id, masked display name)`` of each configured channel, in order, opening nothing.

    For places that name channels without delivering (Dagster's per-channel checks): the same
    ids and names the notifier writes into `notification_deliveries`.
    """
    raw = settings.notify_urls.get_secret_value() if settings.notify_urls else None
    asset = apprise.AppriseAsset(secure_logging=True)
    out = [
        (channel_id(spec.url), str(_plugin(spec, i, asset).url(privacy=True)))  # type: ignore[no-untyped-call]
        for i, spec in enumerate(parse_channels(raw), start=1)
    ]
    if settings.webhook_url:
        out.append((channel_id(settings.webhook_url), "webhook " + _display_url(settings.webhook_url)))
    return out


def build_channels(settings: Settings, *, timeout_s: float = 15.0) -> list[Channel]:
    """The configured channels, in order (see the module docstring)."""
    raw = settings.notify_urls.get_secret_value() if settings.notify_urls else None
    specs = parse_channels(raw)
    channels: list[Channel] = [
        AppriseChannel(spec, position=i, dagster_url=settings.public_dagster_url, timeout_s=timeout_s)
        for i, spec in enumerate(specs, start=1)
    ]
    if settings.webhook_url:
        if settings.webhook_secret is None:
            raise ChannelConfigError(
                "MW_WEBHOOK_URL is set but MW_WEBHOOK_SECRET is not (the webhook is signed)"
            )
        channels.append(
            WebhookChannel(
                settings.webhook_url,
                settings.webhook_secret.get_secret_value(),
                position=len(channels) + 1,
                timeout_s=timeout_s,
            )
        )
    return channels
