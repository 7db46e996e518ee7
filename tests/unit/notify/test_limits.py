"""Token bucket and circuit breaker, driven by a fake clock."""

from __future__ import annotations

import pytest

from mw_core.notify.limits import CircuitBreaker, TokenBucket

pytestmark = pytest.mark.unit


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_bucket_allows_a_burst_then_the_steady_rate() -> None:
    clock = Clock()
    bucket = TokenBucket(rate_per_s=2.0, burst=3, clock=clock)
    for _ in range(3):
        assert bucket.wait_s() == 0.0
        bucket.take()
    assert bucket.wait_s() == pytest.approx(0.5)
    clock.now += 0.5
    assert bucket.wait_s() == 0.0
    bucket.take()
    clock.now += 100
    assert bucket.wait_s() == 0.0  # refills up to the burst only
    for _ in range(3):
        bucket.take()
    assert bucket.wait_s() == pytest.approx(0.5)


def test_breaker_opens_after_n_failures_then_probes_once() -> None:
    clock = Clock()
    breaker = CircuitBreaker(failures=3, open_s=10.0, clock=clock)
    assert not breaker.failure() and not breaker.failure()
    assert breaker.state == "closed"
    assert breaker.failure()
    assert breaker.state in {"open"}  # (a set: mypy narrowed `state` above)
    assert breaker.is_open
    assert breaker.probe_in_s() == pytest.approx(10.0)
    clock.now += 10
    assert breaker.state == "half_open" and not breaker.is_open
    assert breaker.failure()  # a failed probe re-opens at once
    assert breaker.is_open and breaker.probe_in_s() == pytest.approx(10.0)
    clock.now += 10
    breaker.success()
    assert breaker.state == "closed" and breaker.consecutive == 0


def test_success_resets_the_count() -> None:
    breaker = CircuitBreaker(failures=2, open_s=1.0, clock=Clock())
    breaker.failure()
    breaker.success()
    assert not breaker.failure()
