"""The one retry/backoff helper of Market Watch, built on tenacity.

Contract:
- Errors are classified by TYPE, never by message text. `DB_TRANSIENT` / `KAFKA_TRANSIENT` /
  `NET_TRANSIENT` name the errors worth retrying (connection refused or lost, server starting or
  shutting down, timeouts); `FATAL` names the ones that never heal by waiting (wrong password,
  missing privilege, Kafka authorization) and is never retried even when a transient base class
  would match.
- Backoff is exponential with full jitter (AWS style): the wait after attempt ``n`` (1-based) is
  uniform in ``[0, min(cap_s, base_s * 2**(n-1))]`` (tenacity's `wait_random_exponential`).
  ``retry_after(exc)`` may replace one wait by what the server asked for (HTTP ``Retry-After``).
- `retry_async` / `retry_sync` run one call until it succeeds, the attempts or the deadline run
  out (the last error is re-raised), or ``give_up()`` says so. ``on_retry(attempt, exc, delay)``
  runs before each wait: callers log and flip their health there.
- `parse_retry_after(headers)` reads the wait an HTTP server asked for (``retry-after-ms``, or
  ``Retry-After`` in seconds or as an HTTP date); callers hand it to ``retry_after``.
- `jittered_delay` is the same backoff for loops that are not a single call (reconnect loops).
  `exponential_delay` is its upper bound without the jitter, for a policy a person reads (the
  local supervisor shows "restart in 0.4s").
"""

from __future__ import annotations

import email.utils
import math
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any, TypeVar

import asyncpg
from aiokafka.errors import KafkaError, TopicAuthorizationFailedError
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
    stop_any,
    stop_never,
)
from tenacity.stop import stop_base
from tenacity.wait import wait_exponential, wait_random_exponential

T = TypeVar("T")

__all__ = [
    "DB_TRANSIENT",
    "FATAL",
    "KAFKA_TRANSIENT",
    "NET_TRANSIENT",
    "exponential_delay",
    "is_transient",
    "jittered_delay",
    "parse_retry_after",
    "retry_async",
    "retry_sync",
]

#: Network-level failures of any client: refused, reset, unreachable, timed out.
NET_TRANSIENT: tuple[type[BaseException], ...] = (OSError, ConnectionError, TimeoutError)

#: PostgreSQL is down, starting, restarting or dropped the connection.
DB_TRANSIENT: tuple[type[BaseException], ...] = (
    *NET_TRANSIENT,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    # A pooled connection that got the server's shutdown notice while idle can be handed out
    # before its socket close is seen; using it raises this. The pool then terminates it, so the
    # next attempt gets a fresh connection.
    asyncpg.InternalClientError,
)

#: The Kafka broker is unreachable, restarting or not yet the leader.
KAFKA_TRANSIENT: tuple[type[BaseException], ...] = (*NET_TRANSIENT, KafkaError)

#: Never retried: waiting does not fix a wrong password or a missing grant.
FATAL: tuple[type[BaseException], ...] = (
    asyncpg.InvalidPasswordError,
    asyncpg.InvalidAuthorizationSpecificationError,
    asyncpg.InsufficientPrivilegeError,
    asyncpg.InvalidCatalogNameError,
    TopicAuthorizationFailedError,
)


def is_transient(exc: BaseException, retry_on: tuple[type[BaseException], ...]) -> bool:
    """True when `exc` is one of `retry_on` and not `FATAL`."""
    return isinstance(exc, retry_on) and not isinstance(exc, FATAL)


def _attempt_state(attempt: int) -> RetryCallState:
    state = RetryCallState(Retrying(), None, (), {})
    state.attempt_number = max(1, min(attempt, 60))
    return state


def jittered_delay(attempt: int, *, base_s: float, cap_s: float) -> float:
    """Full-jitter backoff after attempt `attempt` (1-based): uniform in ``[0, min(cap, base*2**(n-1))]``."""
    return float(wait_random_exponential(multiplier=base_s, max=cap_s)(_attempt_state(attempt)))


def exponential_delay(attempt: int, *, base_s: float, cap_s: float) -> float:
    """The same backoff without jitter: ``base_s``, ``2*base_s``, ``4*base_s`` ... capped at `cap_s`."""
    return float(wait_exponential(multiplier=base_s, max=cap_s)(_attempt_state(attempt)))


OnRetry = Callable[[int, BaseException, float], None]

#: The wait (seconds) a server asked for after a failed attempt, e.g. its ``Retry-After``; None
#: keeps the jittered backoff. Callers cap it themselves.
RetryAfter = Callable[[BaseException], float | None]


def _stop(
    max_attempts: int | None, deadline_s: float | None, give_up: Callable[[], bool] | None
) -> stop_base:
    stops: list[stop_base] = []
    if max_attempts is not None:
        stops.append(stop_after_attempt(max_attempts))
    if deadline_s is not None:
        stops.append(stop_after_delay(deadline_s))
    if give_up is not None:
        stops.append(_StopWhen(give_up))
    return stop_any(*stops) if stops else stop_never


class _StopWhen(stop_base):
    def __init__(self, predicate: Callable[[], bool]) -> None:
        self.predicate = predicate

    def __call__(self, retry_state: RetryCallState) -> bool:
        return self.predicate()


def parse_retry_after(headers: Mapping[str, str], *, now: datetime | None = None) -> float | None:
    """Seconds to wait from ``retry-after-ms`` or ``Retry-After`` (seconds or HTTP date), else None."""
    raw_ms = headers.get("retry-after-ms")
    if raw_ms is not None:
        try:
            value = float(raw_ms) / 1000.0
        except ValueError:
            value = math.nan
        if math.isfinite(value) and value >= 0:
            return value
    raw = headers.get("retry-after")
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(raw)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            return None
        value = (when - (now or datetime.now(tz=UTC))).total_seconds()
        return max(value, 0.0)
    return value if math.isfinite(value) and value >= 0 else None


def _wait(base_s: float, cap_s: float, retry_after: RetryAfter | None) -> Callable[[RetryCallState], float]:
    backoff = wait_random_exponential(multiplier=base_s, max=cap_s)

    def wait(state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome is not None else None
        asked = retry_after(exc) if retry_after is not None and exc is not None else None
        return float(backoff(state)) if asked is None else asked

    return wait


def _policy(
    retry_on: tuple[type[BaseException], ...],
    *,
    base_s: float,
    cap_s: float,
    stop: stop_base,
    on_retry: OnRetry | None,
    retry_after: RetryAfter | None,
) -> Mapping[str, Any]:
    """The tenacity options shared by `retry_async` and `retry_sync`."""
    return {
        "retry": retry_if_exception(lambda e: is_transient(e, retry_on)),
        "wait": _wait(base_s, cap_s, retry_after),
        "stop": stop,
        "before_sleep": _before_sleep(on_retry),
        "reraise": True,
    }


def _before_sleep(on_retry: OnRetry | None) -> Callable[[RetryCallState], None] | None:
    if on_retry is None:
        return None

    def hook(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome is not None else None
        delay = state.next_action.sleep if state.next_action is not None else 0.0
        if exc is not None:
            on_retry(state.attempt_number, exc, float(delay))

    return hook


async def retry_async(
    fn: Callable[..., Awaitable[T]],
    *args: Any,
    retry_on: tuple[type[BaseException], ...],
    base_s: float = 0.1,
    cap_s: float = 5.0,
    max_attempts: int | None = None,
    deadline_s: float | None = None,
    give_up: Callable[[], bool] | None = None,
    on_retry: OnRetry | None = None,
    retry_after: RetryAfter | None = None,
    **kwargs: Any,
) -> T:
    """Await ``fn(*args, **kwargs)``, retrying transient errors with full-jitter backoff.

    Raises:
        The last error once attempts/deadline run out or `give_up()` is true; any non-transient
        error at once.
    """
    stop = _stop(max_attempts, deadline_s, give_up)
    retrying = AsyncRetrying(
        **_policy(retry_on, base_s=base_s, cap_s=cap_s, stop=stop, on_retry=on_retry, retry_after=retry_after)
    )
    result: T = await retrying(fn, *args, **kwargs)
    return result


def retry_sync(
    fn: Callable[..., T],
    *args: Any,
    retry_on: tuple[type[BaseException], ...],
    base_s: float = 0.25,
    cap_s: float = 5.0,
    max_attempts: int | None = None,
    deadline_s: float | None = None,
    on_retry: OnRetry | None = None,
    retry_after: RetryAfter | None = None,
    sleep: Callable[[float], None] = time.sleep,
    **kwargs: Any,
) -> T:
    """Synchronous `retry_async` (same classification, same backoff); `sleep` is a seam for tests."""
    stop = _stop(max_attempts, deadline_s, None)
    retrying = Retrying(
        sleep=sleep,
        **_policy(
            retry_on, base_s=base_s, cap_s=cap_s, stop=stop, on_retry=on_retry, retry_after=retry_after
        ),
    )
    return retrying(fn, *args, **kwargs)
