"""Pure per-channel flow control: a token bucket (rate limit) and a circuit breaker.

Contract:
- `TokenBucket(rate_per_s, burst)`: starts full; each delivery attempt takes one token; tokens
  refill continuously at `rate_per_s` up to `burst`. `wait_s()` is how long until a token exists
  (0 when one does), `take()` consumes one. So a channel gets `burst` messages at once, then the
  steady rate.
- `CircuitBreaker(failures, open_s)`: ``closed`` counts consecutive failures; the `failures`-th
  opens it (the channel is *parked*). After `open_s` it is ``half_open``: one probe attempt is
  allowed; success closes it, failure opens it again for another `open_s`.
- Both take the clock as an argument (`time.monotonic` by default) so tests drive time.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

Clock = Callable[[], float]
BreakerState = Literal["closed", "open", "half_open"]


@dataclass
class TokenBucket:
    rate_per_s: float
    burst: int
    clock: Clock = time.monotonic
    _tokens: float = field(init=False)
    _at: float = field(init=False)

    def __post_init__(self) -> None:
        if self.rate_per_s <= 0 or self.burst < 1:
            raise ValueError("rate_per_s must be > 0 and burst >= 1")
        self._tokens = float(self.burst)
        self._at = self.clock()

    def _refill(self) -> None:
        now = self.clock()
        self._tokens = min(float(self.burst), self._tokens + (now - self._at) * self.rate_per_s)
        self._at = now

    def wait_s(self) -> float:
        """Seconds until one token is available (0.0 when one is)."""
        self._refill()
        return 0.0 if self._tokens >= 1.0 else (1.0 - self._tokens) / self.rate_per_s

    def take(self) -> None:
        """Consume one token (callers wait `wait_s()` first)."""
        self._refill()
        self._tokens -= 1.0


@dataclass
class CircuitBreaker:
    failures: int
    open_s: float
    clock: Clock = time.monotonic
    consecutive: int = 0
    opened_at: float | None = None

    @property
    def state(self) -> BreakerState:
        if self.opened_at is None:
            return "closed"
        return "half_open" if self.clock() - self.opened_at >= self.open_s else "open"

    @property
    def is_open(self) -> bool:
        """True while attempts must wait (open and not yet due for a probe)."""
        return self.state == "open"

    def probe_in_s(self) -> float:
        """Seconds until the next probe is allowed (0.0 unless open)."""
        if self.opened_at is None:
            return 0.0
        return max(0.0, self.opened_at + self.open_s - self.clock())

    def success(self) -> None:
        self.consecutive = 0
        self.opened_at = None

    def failure(self) -> bool:
        """Record a failure; True when this failure (re)opened the circuit."""
        self.consecutive += 1
        if self.opened_at is not None or self.consecutive >= self.failures:
            # A failed half-open probe re-opens at once; a closed circuit opens at the threshold.
            self.opened_at = self.clock()
            return True
        return False
