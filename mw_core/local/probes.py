"""Health probes of the local platform: is a component up?

Contract:
- A `HealthCheck` is ``None`` (no probe: being alive is enough), ``(host, port)`` (TCP connect),
  an ``http(s)://`` URL (a 2xx answer) or a callable returning bool.
- `check_health` never raises: a probe that raises counts as unhealthy.
- `http_status` returns any HTTP answer (status and the first 64 KiB of the body), or None when
  nothing answers; callers decide which statuses count (a 503 from `/healthz` still means "runs").
"""

from __future__ import annotations

import logging
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import TypeAlias

from mw_core.local.ports import port_open

log = logging.getLogger(__name__)

HealthCheck: TypeAlias = Callable[[], bool] | tuple[str, int] | str | None


def http_status(url: str, *, timeout: float = 1.0) -> tuple[int, bytes] | None:
    """(status, body) of a GET, or None when nothing answers. Any HTTP status counts as an answer."""
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"not an http(s) URL: {url!r}")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - scheme checked above
            return int(resp.status), resp.read(65536)
    except urllib.error.HTTPError as exc:
        body = exc.read(65536) if exc.fp is not None else b""
        return int(exc.code), body
    except (OSError, ValueError):
        return None


def http_ok(url: str, *, timeout: float = 1.0, any_status: bool = False) -> bool:
    """True on a 2xx answer (or on any HTTP answer with ``any_status``)."""
    answer = http_status(url, timeout=timeout)
    if answer is None:
        return False
    return any_status or 200 <= answer[0] < 300


def check_health(health: HealthCheck, *, timeout: float = 1.0) -> bool:
    """Evaluate one health check; exceptions count as unhealthy."""
    try:
        if health is None:
            return True
        if isinstance(health, tuple):
            return port_open(health[0], int(health[1]), timeout=timeout)
        if isinstance(health, str):
            return http_ok(health, timeout=timeout)
        return bool(health())
    except Exception as exc:
        log.debug("health check raised %r", exc)
        return False
