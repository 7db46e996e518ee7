"""The one retry helper: typed classification, full-jitter backoff, deadlines, hooks."""

from __future__ import annotations

from datetime import UTC, datetime

import asyncpg
import pytest

from mw_core.adapters.retry import (
    DB_TRANSIENT,
    is_transient,
    jittered_delay,
    parse_retry_after,
    retry_async,
    retry_sync,
)

pytestmark = pytest.mark.unit


def test_jittered_delay_is_full_jitter_and_capped() -> None:
    for attempt in range(1, 40):
        ceiling = min(2.0, 0.1 * 2**attempt)
        samples = [jittered_delay(attempt, base_s=0.1, cap_s=2.0) for _ in range(50)]
        assert all(0.0 <= s <= ceiling for s in samples)
    assert max(jittered_delay(30, base_s=0.1, cap_s=2.0) for _ in range(200)) > 1.0


def test_reconnect_backoff_after_failures_is_bounded_by_the_capped_exponential() -> None:
    # The ingest reconnect loops wait `jittered_delay(failures + 1)` after `failures` failures.
    for failures in range(40):
        ceiling = min(5.0, 0.5 * 2**failures)
        samples = [jittered_delay(failures + 1, base_s=0.5, cap_s=5.0) for _ in range(50)]
        assert all(0.0 <= s <= ceiling for s in samples)
    assert len({jittered_delay(4, base_s=0.5, cap_s=5.0) for _ in range(20)}) > 1  # jittered


def test_fatal_errors_are_never_transient() -> None:
    assert is_transient(ConnectionRefusedError(), DB_TRANSIENT)
    assert not is_transient(asyncpg.InvalidPasswordError("no"), DB_TRANSIENT)
    assert not is_transient(ValueError(), DB_TRANSIENT)


async def test_retry_async_retries_transient_then_succeeds() -> None:
    calls: list[int] = []
    seen: list[tuple[int, str]] = []

    async def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionResetError("reset")
        return "ok"

    result = await retry_async(
        flaky,
        retry_on=DB_TRANSIENT,
        base_s=0.001,
        cap_s=0.002,
        on_retry=lambda n, e, d: seen.append((n, type(e).__name__)),
    )
    assert result == "ok"
    assert seen == [(1, "ConnectionResetError"), (2, "ConnectionResetError")]


async def test_retry_async_raises_fatal_at_once() -> None:
    calls: list[int] = []

    async def denied() -> None:
        calls.append(1)
        raise asyncpg.InvalidPasswordError("password authentication failed")

    with pytest.raises(asyncpg.InvalidPasswordError):
        await retry_async(denied, retry_on=DB_TRANSIENT, base_s=0.001)
    assert calls == [1]


def test_retry_sync_gives_up_after_attempts_with_last_error() -> None:
    calls: list[int] = []

    def down() -> None:
        calls.append(1)
        raise TimeoutError(f"attempt {len(calls)}")

    with pytest.raises(TimeoutError, match="attempt 4"):
        retry_sync(down, retry_on=DB_TRANSIENT, base_s=0.001, cap_s=0.001, max_attempts=4)
    assert len(calls) == 4


async def test_give_up_stops_retrying() -> None:
    calls: list[int] = []

    async def down() -> None:
        calls.append(1)
        raise OSError("down")

    with pytest.raises(OSError):
        await retry_async(down, retry_on=DB_TRANSIENT, base_s=0.001, give_up=lambda: len(calls) >= 2)
    assert len(calls) == 2


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"retry-after": "2"}, 2.0),
        ({"retry-after": "0.25"}, 0.25),
        ({"retry-after-ms": "1500"}, 1.5),
        ({"retry-after-ms": "1500", "retry-after": "9"}, 1.5),
        ({"retry-after-ms": "nope", "retry-after": "3"}, 3.0),
        ({"retry-after": "Mon, 05 Aug 2024 02:00:10 GMT"}, 10.0),
        ({"retry-after": "Mon, 05 Aug 2024 01:59:00 GMT"}, 0.0),
        ({"retry-after": "soon"}, None),
        ({"retry-after": "-1"}, None),
        ({"retry-after": "inf"}, None),
        ({}, None),
    ],
)
def test_parse_retry_after(headers: dict[str, str], expected: float | None) -> None:
    now = datetime(2024, 8, 5, 2, 0, tzinfo=UTC)
    assert parse_retry_after(headers, now=now) == expected


def test_retry_sync_waits_what_the_server_asked_for_else_the_backoff() -> None:
    calls: list[int] = []
    waits: list[float] = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionResetError("busy")
        return "ok"

    def asked(exc: BaseException) -> float | None:
        return 7.5 if len(calls) == 1 else None  # only the first answer carried a Retry-After

    out = retry_sync(
        flaky, retry_on=DB_TRANSIENT, base_s=0.001, cap_s=0.002, retry_after=asked, sleep=waits.append
    )
    assert out == "ok"
    assert waits[0] == 7.5 and 0.0 <= waits[1] <= 0.002
