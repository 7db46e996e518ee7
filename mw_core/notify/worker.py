"""One channel's delivery loop: in order, rate-limited, retried, behind a circuit breaker.

Contract:
- Jobs (one event for this channel) are delivered strictly in submission order: the head of the
  queue blocks the ones behind it, so a channel that recovers receives its backlog in order.
- Every attempt first takes a token from the channel's `TokenBucket` (burst, then steady rate)
  and is recorded (`record`) before the next one: ``delivered``, ``failed``, or ``parked`` when
  the failure left the circuit open.
- Transient failures are retried by `mw_core.adapters.retry.retry_async` (exponential backoff +
  full jitter; a 429's ``Retry-After``, capped at `RETRY_AFTER_CAP_S`, replaces the backoff).
  After `circuit_failures` consecutive failures the channel is parked: no attempt until
  `circuit_open_s` has passed, then ONE probe with the head job (half-open); success resumes
  the backlog, failure parks the channel again.
- A job whose attempts reach `max_attempts` (probes count), or that the receiver rejects
  permanently (4xx), is dead: first sent to the DLQ (`dead_letter`), then recorded ``dead``.
  A crash between the two re-attempts the job after the restart; it is never lost.
- `stop()` never interrupts an attempt or its recording: it waits for the one in flight, so a
  graceful restart re-sends nothing that was delivered.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field

from mw_core.adapters.postgres.notifications import Attempt
from mw_core.adapters.retry import retry_async
from mw_core.notify.channels import Channel, Outcome
from mw_core.notify.limits import CircuitBreaker, TokenBucket
from mw_core.notify.messages import Alert

log = logging.getLogger(__name__)

RETRY_AFTER_CAP_S = 300.0

RecordFn = Callable[[Attempt], Awaitable[None]]
DeadLetterFn = Callable[["Job", str, str], Awaitable[None]]
ObserveFn = Callable[[str, str, float | None], None]  # (channel id, status, latency ms)


@dataclass
class Job:
    alert: Alert
    key: str  # idempotency key: (event, channel)
    attempts: int = 0


@dataclass
class ChannelStats:
    delivered: int = 0
    failed: int = 0  # failed attempts (retried or parked)
    dead: int = 0
    last_error: str | None = None
    latencies_ms: deque[float] = field(default_factory=lambda: deque(maxlen=1000))


class DeliveryFailed(Exception):
    """A transient failure of one attempt (retried)."""

    def __init__(self, outcome: Outcome) -> None:
        super().__init__(outcome.error or "delivery failed")
        self.outcome = outcome


class DeliveryRejected(Exception):
    """A permanent failure: the receiver refused this request; retrying cannot help (not retried)."""

    def __init__(self, outcome: Outcome) -> None:
        super().__init__(outcome.error or "delivery rejected")
        self.outcome = outcome


def _asked_wait(exc: BaseException) -> float | None:
    if isinstance(exc, DeliveryFailed) and exc.outcome.retry_after_s is not None:
        return min(exc.outcome.retry_after_s, RETRY_AFTER_CAP_S)
    return None


class ChannelWorker:
    def __init__(
        self,
        channel: Channel,
        *,
        record: RecordFn,
        dead_letter: DeadLetterFn,
        max_attempts: int,
        rate_per_min: float,
        burst: int,
        circuit_failures: int,
        circuit_open_s: float,
        backoff_base_s: float = 0.5,
        backoff_cap_s: float = 30.0,
        observe: ObserveFn | None = None,
    ) -> None:
        self.channel = channel
        self.stats = ChannelStats()
        self.bucket = TokenBucket(rate_per_min / 60.0, burst)
        self.breaker = CircuitBreaker(circuit_failures, circuit_open_s)
        self._record = record
        self._dead_letter = dead_letter
        self._observe = observe
        self._max_attempts = max_attempts
        self._base_s = backoff_base_s
        self._cap_s = backoff_cap_s
        self._queue: deque[Job] = deque()
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._stopping = False
        self._busy = 0
        self._not_busy = asyncio.Event()
        self._not_busy.set()
        self._task: asyncio.Task[None] | None = None

    # --- queue ---------------------------------------------------------------------------------
    def submit(self, job: Job) -> None:
        self._queue.append(job)
        self._idle.clear()
        self._wake.set()

    @property
    def backlog(self) -> int:
        return len(self._queue)

    @property
    def parked(self) -> int:
        """Jobs waiting behind an open circuit (0 while the channel works)."""
        return len(self._queue) if self.breaker.state != "closed" else 0

    async def wait_idle(self) -> None:
        """Return once every submitted job reached a final state."""
        await self._idle.wait()

    # --- lifecycle -----------------------------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"notify-{self.channel.id}")

    async def stop(self) -> None:
        """Finish the attempt in flight (never cut one), then end the loop."""
        self._stopping = True
        self._wake.set()
        task = self._task
        if task is None:
            return
        if not task.done():
            await self._not_busy.wait()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    @contextlib.contextmanager
    def _in_flight(self) -> Iterator[None]:
        self._busy += 1
        self._not_busy.clear()
        try:
            yield
        finally:
            self._busy -= 1
            if self._busy == 0:
                self._not_busy.set()

    async def _run(self) -> None:
        while not self._stopping:
            if not self._queue:
                self._idle.set()
                self._wake.clear()
                await self._wake.wait()
                continue
            wait = self.breaker.probe_in_s()
            if wait > 0:
                await asyncio.sleep(wait)
                continue
            job = self._queue[0]
            try:
                await retry_async(
                    self._attempt,
                    job,
                    retry_on=(DeliveryFailed,),
                    base_s=self._base_s,
                    cap_s=self._cap_s,
                    max_attempts=max(1, self._max_attempts - job.attempts),
                    give_up=lambda: self._stopping or self.breaker.is_open,
                    retry_after=_asked_wait,
                )
            except DeliveryRejected as exc:
                with self._in_flight():
                    await self._finish_dead(job, "notify_rejected", exc.outcome)
            except DeliveryFailed as exc:
                if job.attempts >= self._max_attempts:
                    with self._in_flight():
                        await self._finish_dead(job, "notify_attempts_exhausted", exc.outcome)
                # else: parked or stopping; the head job stays first in line
            else:
                self._queue.popleft()

    # --- one attempt ---------------------------------------------------------------------------
    async def _attempt(self, job: Job) -> None:
        wait = self.bucket.wait_s()
        if wait > 0:
            await asyncio.sleep(wait)
        self.bucket.take()
        with self._in_flight():
            outcome = await self.channel.send(job.alert, job.key)
            job.attempts += 1
            if outcome.ok:
                self.breaker.success()
                await self._save(job, "delivered", outcome)
                self.stats.delivered += 1
                self.stats.latencies_ms.append(outcome.latency_ms)
                return
            self.stats.failed += 1
            self.stats.last_error = outcome.error
            if outcome.permanent:
                raise DeliveryRejected(outcome)
            opened = self.breaker.failure()
            if job.attempts >= self._max_attempts:
                raise DeliveryFailed(outcome)  # recorded `dead` by the loop, after the DLQ
            await self._save(job, "parked" if opened else "failed", outcome)
            if opened:
                log.warning(
                    "notify: channel %s parked after %d consecutive failures (%s); %d event(s) waiting, "
                    "probe in %.1fs",
                    self.channel.name,
                    self.breaker.consecutive,
                    outcome.error,
                    len(self._queue),
                    self.breaker.open_s,
                )
            raise DeliveryFailed(outcome)

    async def _finish_dead(self, job: Job, reason: str, outcome: Outcome) -> None:
        detail = f"channel {self.channel.name}: {outcome.error} after {job.attempts} attempt(s)"
        await self._dead_letter(job, reason, detail)
        await self._save(job, "dead", outcome)
        self.stats.dead += 1
        self._queue.popleft()
        log.error("notify: %s dead-lettered (%s): %s", job.alert.key, reason, detail)

    async def _save(self, job: Job, status: str, outcome: Outcome) -> None:
        await self._record(
            Attempt(
                channel=self.channel.id,
                channel_name=self.channel.name,
                event_key=job.alert.key,
                idempotency_key=job.key,
                status=status,
                attempt=job.attempts,
                http_status=outcome.http_status,
                latency_ms=outcome.latency_ms,
                error=outcome.error,
            )
        )
        if self._observe is not None:
            self._observe(self.channel.id, status, outcome.latency_ms if outcome.ok else None)
