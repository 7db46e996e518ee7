"""The one retry/backoff helper of Market Watch, built on tenacity.

Contract:
- Errors are classified by TYPE, never by message text. `DB_TRANSIENT` / `KAFKA_TRANSIENT` /
  `NET_TRANSIENT` name the errors worth retrying (connection refused or lost, server starting or
  shutting down, timeouts); `FATAL` names the ones that never heal by waiting (wrong password,
  missing privilege, Kafka authorization) and is never retried even when a transient base class
  would match.
- Backoff is exponential with full jitter (AWS style): attempt ``n`` (1-based) waits a uniform
  time in ``[0, min(cap_s, base_s * 2**n)]`` (tenacity's `wait_random_exponential`).
- `retry_async` / `retry_sync` run one call until it succeeds, the attempts or the deadline run
  out (the last error is re-raised), or ``give_up()`` says so. ``on_retry(attempt, exc, delay)``
  runs before each wait: callers log and flip their health there.
- `jittered_delay` is the same backoff for loops that are not a single call (reconnect loops,
  the supervisor's restart policy).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
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
from tenacity.wait import wait_random_exponential

T = TypeVar("T")

__all__ = [
    "DB_TRANSIENT",
    "FATAL",
    "KAFKA_TRANSIENT",
    "NET_TRANSIENT",
    "is_transient",
    "jittered_delay",
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


def jittered_delay(attempt: int, *, base_s: float, cap_s: float) -> float:
    """Full-jitter backoff for attempt `attempt` (1-based): uniform in ``[0, min(cap, base*2**n)]``."""
    state = RetryCallState(Retrying(), None, (), {})
    state.attempt_number = max(1, min(attempt, 60))
    return float(wait_random_exponential(multiplier=base_s, max=cap_s)(state))


OnRetry = Callable[[int, BaseException, float], None]


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
    **kwargs: Any,
) -> T:
    """Await ``fn(*args, **kwargs)``, retrying transient errors with full-jitter backoff.

    Raises:
        The last error once attempts/deadline run out or `give_up()` is true; any non-transient
        error at once.
    """
    retrying = AsyncRetrying(
        retry=retry_if_exception(lambda e: is_transient(e, retry_on)),
        wait=wait_random_exponential(multiplier=base_s, max=cap_s),
        stop=_stop(max_attempts, deadline_s, give_up),
        before_sleep=_before_sleep(on_retry),
        reraise=True,
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
    **kwargs: Any,
) -> T:
    """Synchronous `retry_async` (same classification, same backoff)."""
    retrying = Retrying(
        retry=retry_if_exception(lambda e: is_transient(e, retry_on)),
        wait=wait_random_exponential(multiplier=base_s, max=cap_s),
        stop=_stop(max_attempts, deadline_s, None),
        before_sleep=_before_sleep(on_retry),
        reraise=True,
    )
    return retrying(fn, *args, **kwargs)
