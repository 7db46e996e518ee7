"""Keep the embedded broker under ``MW_BROKER_MAX_MEMORY_MB``: a planned rollover, nothing lost.

Why: the embedded Tansu broker keeps every record in memory, has no retention and closes the
connection on DeleteRecords, so its RSS grows with every tick (~70 bytes a tick). The only way
to free that memory is a new broker process, and the only way to do that without losing a tick
is to make sure every record of the old one is durable downstream first.

Contract (`BrokerRollover.check`, a `Supervisor` watcher run after every poll of `mw up`):
- It samples the broker's RSS (psutil) and publishes ``rss_mb``, ``max_memory_mb``,
  ``rollovers`` and ``last_rollover`` in the broker's status.json record (`mw status` shows them).
- When the RSS reaches ``trigger_fraction`` (60 %) of the cap, it rolls the broker over:

  1. pause the producers: SIGSTOP to their process groups (the ingest; any producer works, no
     cooperation needed). Their in-memory buffers hold the ticks; the websocket's TCP window
     holds the rest, and after a reconnect the ingest backfills gaps from REST;
  2. wait until every consumer group of the plan has committed every record: committed offset ==
     high watermark on every partition, twice in a row (`mw_core.local.drain`), while the
     supervisor keeps polling (a crashed processor is restarted and resumes from its offsets);
  3. stop the consumers (SIGTERM: they have nothing left to commit), stop the broker, start it
     again on the same port; its ready hook re-creates the topics (`bus.ensure_topics`);
  4. start the consumers again: the new broker has no committed offsets, so they begin at the
     earliest offset of the new, empty topics (`auto_offset_reset="earliest"` in `bus.consumer`);
     a consumer that kept running would keep its old positions and skip records;
  5. resume the producers (SIGCONT). Their unacknowledged batches are retried against the new
     broker; one the old broker had stored is then stored twice in Kafka and once in PostgreSQL
     (idempotent ``ON CONFLICT`` writes).

- The rollover never drops data to save memory: if the groups do not catch up within
  ``drain_timeout_s`` it gives up, resumes the producers, logs a warning and tries again after
  ``retry_after_s``. A stop request (Ctrl-C) aborts it the same way, producers resumed first.
- Scope: records of topics no group in the plan consumes (``dlq``, ``news``; ``alerts`` without
  a notifier) are not carried over, as on any restart of the memory-only broker; their durable
  copies are in PostgreSQL.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from aiokafka.errors import KafkaError

from mw_core.config import Settings
from mw_core.local.drain import ConsumerGroup, lag_of
from mw_core.local.stack import Stack
from mw_core.local.state_files import now_iso
from mw_core.local.supervisor import Supervisor

log = logging.getLogger(__name__)

MB = 1024 * 1024
TRIGGER_FRACTION = 0.6  # headroom for what arrives between the sample and the pause, and for fetches


@dataclass(frozen=True)
class RolloverPlan:
    """What to roll over and who to pause, drain and restart (component names of the supervisor)."""

    max_memory_mb: int
    broker: str
    producers: tuple[str, ...]
    consumers: tuple[str, ...]
    groups: tuple[ConsumerGroup, ...]
    settings: Callable[[], Settings]  # resolved at rollover time: the bootstrap is known only then
    rss_bytes: Callable[[], int | None]
    trigger_fraction: float = TRIGGER_FRACTION
    drain_timeout_s: float = 300.0
    restart_timeout_s: float = 60.0
    retry_after_s: float = 60.0
    min_interval_s: float = 1.0

    @property
    def trigger_bytes(self) -> int:
        return int(self.max_memory_mb * MB * self.trigger_fraction)


@dataclass
class RolloverStats:
    """What the rollovers did (the bench reads it; status.json shows a summary)."""

    rollovers: int = 0
    aborted: int = 0
    pauses_s: list[float] = field(default_factory=list)
    max_rss_bytes: int = 0


class _Aborted(Exception):
    """The rollover cannot finish safely now (stop requested, groups not caught up, broker down)."""


class BrokerRollover:
    """A `Supervisor` watcher that rolls the embedded broker over (see the module docstring)."""

    def __init__(self, sup: Supervisor, plan: RolloverPlan) -> None:
        self.sup = sup
        self.plan = plan
        self.stats = RolloverStats()
        self._next_allowed = 0.0
        self._shown_mb = -1
        self._shown_at = 0.0

    def sample(self) -> int | None:
        rss = self.plan.rss_bytes()
        if rss is not None and rss > self.stats.max_rss_bytes:
            self.stats.max_rss_bytes = rss
        return rss

    def check(self) -> None:
        """Sample the broker's memory; roll it over when past the trigger."""
        if self.sup.stop_requested or self.sup.component(self.plan.broker)["state"] != "running":
            return
        rss = self.sample()
        if rss is None:
            return
        self._show(rss)
        now = time.monotonic()
        if rss >= self.plan.trigger_bytes and now >= self._next_allowed:
            self.roll(reason=f"RSS {rss / MB:.0f} MB >= {self.plan.trigger_bytes / MB:.0f} MB")

    def roll(self, *, reason: str = "requested") -> bool:
        """One rollover; True when the broker was replaced. Producers are always resumed."""
        t0 = time.monotonic()
        log.warning("broker rollover: %s; pausing %s", reason, ", ".join(self.plan.producers))
        self.sup.note(self.plan.broker, f"rollover: {reason}")
        try:
            self._pause_producers()
            self._wait_drained()
            for name in self.plan.consumers:
                self.sup.stop_component(name)
            self.sup.stop_component(self.plan.broker)
            self.sup.start_component(self.plan.broker)
            self._wait_running(self.plan.broker)
            for name in self.plan.consumers:
                self.sup.start_component(name)
        except _Aborted as exc:
            self.stats.aborted += 1
            self._next_allowed = time.monotonic() + self.plan.retry_after_s
            log.warning("broker rollover aborted (%s); retrying in %.0fs", exc, self.plan.retry_after_s)
            self.sup.note(self.plan.broker, f"rollover aborted: {exc}")
            return False
        finally:
            if not self.sup.stop_requested:  # consumers stopped before an abort come back
                for name in self.plan.consumers:
                    if self.sup.component(name)["state"] == "stopped":
                        self.sup.start_component(name)
            self._resume_producers()
        pause = time.monotonic() - t0
        self.stats.rollovers += 1
        self.stats.pauses_s.append(round(pause, 3))
        self._next_allowed = time.monotonic() + self.plan.min_interval_s
        log.warning("broker rollover #%d done: producers paused %.2fs", self.stats.rollovers, pause)
        self.sup.note(self.plan.broker, f"rollover #{self.stats.rollovers} done, paused {pause:.1f}s")
        self.sup.set_fields(
            self.plan.broker,
            rollovers=self.stats.rollovers,
            last_rollover={"at": now_iso(), "pause_s": round(pause, 3), "reason": reason},
        )
        return True

    # --- steps ---------------------------------------------------------------------------------
    def _pause_producers(self) -> None:
        """SIGSTOP every producer's process group. Repeated while waiting (harmless for a stopped
        group), so a producer the supervisor respawns during the rollover is paused too."""
        for name in self.plan.producers:
            self.sup.signal_component(name, signal.SIGSTOP)

    def _resume_producers(self) -> None:
        for name in self.plan.producers:
            self.sup.signal_component(name, signal.SIGCONT)

    def _tick(self) -> None:
        """Keep supervising while we wait; abort on a stop request."""
        self.sup.poll()
        self._pause_producers()
        if self.sup.stop_requested:
            raise _Aborted("stop requested")
        time.sleep(0.2)

    def _wait_drained(self) -> None:
        """Every group committed every record, on two checks in a row (a produce request already in
        the kernel's socket buffer when SIGSTOP came still lands after the first check)."""
        deadline = time.monotonic() + self.plan.drain_timeout_s
        zero_in_a_row = 0
        lag: int | str = "?"
        while zero_in_a_row < 2:
            if time.monotonic() > deadline:
                raise _Aborted(f"consumers not caught up after {self.plan.drain_timeout_s:.0f}s (lag {lag})")
            try:
                lag = asyncio.run(lag_of(self.plan.settings(), self.plan.groups))
            except (KafkaError, OSError, TimeoutError) as exc:
                log.info("drain check failed (%s: %s); retrying", type(exc).__name__, exc)
                lag = "?"
            zero_in_a_row = zero_in_a_row + 1 if lag == 0 else 0
            self._show(self.sample())
            if zero_in_a_row < 2:
                self._tick()

    def _wait_running(self, name: str) -> None:
        deadline = time.monotonic() + self.plan.restart_timeout_s
        while self.sup.component(name)["state"] != "running":
            if time.monotonic() > deadline:
                raise _Aborted(f"{name} not running {self.plan.restart_timeout_s:.0f}s after its restart")
            self._tick()

    def _show(self, rss: int | None) -> None:
        """Publish the broker's memory in status.json (on a 1 MB change, or every 5 s)."""
        if rss is None:
            return
        mb = round(rss / MB)
        now = time.monotonic()
        if mb == self._shown_mb and now - self._shown_at < 5.0:
            return
        self._shown_mb, self._shown_at = mb, now
        self.sup.set_fields(
            self.plan.broker,
            rss_mb=round(rss / MB, 1),
            max_memory_mb=self.plan.max_memory_mb,
            rollovers=self.stats.rollovers,
        )


def attach_rollover(stack: Stack, sup: Supervisor) -> BrokerRollover | None:
    """Watch `mw up`'s embedded broker (None with an external Kafka, which has its own retention).

    Producers: ``ingest``. Consumers: ``process`` (group ``MW_CONSUMER_GROUP`` on prices) and, when
    the stack runs one, ``notify`` (group ``MW_NOTIFY_GROUP`` on alerts).
    """
    settings = stack.settings
    if settings.kafka_bootstrap is not None:
        return None
    names = {c["component"] for c in sup.snapshot()["components"]}
    groups = [ConsumerGroup(settings.consumer_group, (settings.topic_prices,))]
    consumers = ["process"]
    if "notify" in names:
        groups.append(ConsumerGroup(settings.notify_group, (settings.topic_alerts,)))
        consumers.append("notify")
    plan = RolloverPlan(
        max_memory_mb=settings.broker_max_memory_mb,
        broker="kafka",
        producers=tuple(n for n in ("ingest",) if n in names),
        consumers=tuple(consumers),
        groups=tuple(groups),
        settings=stack.resolved_settings,
        rss_bytes=lambda: stack.broker.rss_bytes() if stack.broker is not None else None,
    )
    rollover = BrokerRollover(sup, plan)
    sup.add_watcher(rollover.check)
    return rollover
