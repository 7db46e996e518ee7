"""A small process supervisor for the local platform (`mw up`), independent of Market Watch.

Contract:
- A `Supervisor` runs an ordered list of specs (`mw_core.local.specs`: child processes, managed
  servers, one-shot steps). `start()` starts them in order and waits for each one's health check
  before the next.
- A component that dies while the stack runs is restarted with exponential backoff
  (`mw_core.adapters.retry.exponential_delay`: ``backoff_base``, doubling, capped at
  ``backoff_max``) when its spec says ``restart=True``; every restart is logged and counted. A
  component that stays up for ``stable_after`` seconds has its backoff reset.
- `stop()` stops in reverse order: SIGTERM to the process group, wait (services flush and commit on
  SIGTERM), SIGKILL after the component's timeout, all within one overall budget (15 s by
  default). Descendants that left the group are killed too, so no orphan process survives
  (`mw_core.local.processes.stop_group`).
- ``state_dir/status.json`` is rewritten atomically on every change (`mw_core.local.state_files`);
  taking the state dir's lock (`StackLock`) is the caller's job, and `mw_core.local.down` stops a
  stack from another process.
- Single-threaded: the caller's thread runs start/poll/stop; signal handlers only set a flag.
- Watchers (`add_watcher`) run after every `poll()` of `run()`; they may drive components through
  `signal_component` / `stop_component` / `start_component` (calling `poll()` while they wait)
  and publish extra status fields with `set_fields` (the broker rollover,
  `mw_core.local.rollover`, is one). Such planned stops and starts are not counted as restarts.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from mw_core.adapters.processes import create_time
from mw_core.adapters.retry import exponential_delay
from mw_core.local.component_state import ComponentState
from mw_core.local.probes import check_health
from mw_core.local.processes import group_alive, signal_group, stop_group
from mw_core.local.specs import ComponentSpec, ManagedSpec, Spec, StepSpec, resolve_address
from mw_core.local.state_files import LOG_DIR, STATUS_FILE, now_iso, tail, write_json_atomic

log = logging.getLogger(__name__)

DEFAULT_STOP_TIMEOUT = 15.0


class StartupError(RuntimeError):
    """A component did not become healthy during `Supervisor.start()`."""

    def __init__(self, name: str, reason: str, log_tail: str = "") -> None:
        self.component = name
        self.reason = reason
        self.log_tail = log_tail
        super().__init__(f"{name}: {reason}")


class Supervisor:
    """Start, watch, restart and stop an ordered list of specs. See the module docstring."""

    def __init__(
        self,
        specs: Sequence[Spec],
        *,
        state_dir: Path,
        stop_timeout: float = DEFAULT_STOP_TIMEOUT,
        backoff_base: float = 0.5,
        backoff_max: float = 30.0,
        stable_after: float = 30.0,
        poll_interval: float = 0.2,
        meta: Mapping[str, Any] | Callable[[], Mapping[str, Any]] | None = None,
        listener: Callable[[], None] | None = None,
    ) -> None:
        names = [s.name for s in specs]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate component names in {names}")
        self.state_dir = Path(state_dir).absolute()
        self.log_dir = self.state_dir / LOG_DIR
        self.status_path = self.state_dir / STATUS_FILE
        self.stop_timeout = stop_timeout
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.stable_after = stable_after
        self.poll_interval = poll_interval
        # `meta` (shown in status.json) may be a callable re-evaluated at every write, so addresses
        # known only after earlier components started appear as soon as they exist.
        self._meta_source = meta if callable(meta) else None
        self.meta: dict[str, Any] = {} if callable(meta) or meta is None else dict(meta)
        self.listener = listener
        self.started_at = now_iso()
        self.events: deque[dict[str, str]] = deque(maxlen=50)
        self._components = [ComponentState(spec=s, address=resolve_address(s)) for s in specs]
        self._stop = threading.Event()
        self._hurry = False
        self._stopped = False
        self._write_lock = threading.Lock()
        self._watchers: list[Callable[[], None]] = []
        self.stop_seconds: float | None = None

    # --- public API -------------------------------------------------------------------------------
    @property
    def stop_requested(self) -> bool:
        return self._stop.is_set()

    def request_stop(self) -> None:
        """Ask `run()` / `start()` to stop (signal-handler safe). A second call skips the grace period."""
        if self._stop.is_set():
            self._hurry = True
        self._stop.set()

    def log_path(self, name: str) -> Path:
        spec = self._get(name).spec
        if isinstance(spec, ManagedSpec) and spec.log is not None:
            return spec.log
        return self.log_dir / f"{name}.log"

    def component(self, name: str) -> dict[str, Any]:
        """One component's status.json record."""
        return self._record_of(self._get(name))

    def snapshot(self) -> dict[str, Any]:
        """The content of status.json."""
        return {
            "supervisor": {
                "pid": os.getpid(),
                "create_time": create_time(os.getpid()),
                "started_at": self.started_at,
                "state_dir": str(self.state_dir),
            },
            "updated_at": now_iso(),
            "meta": {**(self._meta_source() if self._meta_source else {}), **self.meta},
            "components": [self._record_of(c) for c in self._components],
            "events": list(self.events),
        }

    def set_meta(self, **values: Any) -> None:
        self.meta.update(values)
        self._changed()

    def start(self) -> bool:
        """Start every spec in order, each healthy before the next.

        Returns False when a stop was requested meanwhile. Raises `StartupError` (after stopping
        what already started) when a component fails.
        """
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.meta["ready"] = False
        self._event("stack", "starting")
        t_stack = time.monotonic()
        for comp in self._components:
            if self._stop.is_set():
                return False
            t0 = time.monotonic()
            try:
                self._start_initial(comp)
            except StartupError:
                self.stop()
                raise
            except Exception as exc:
                comp.state = "failed"
                comp.detail = f"{type(exc).__name__}: {exc}"
                self._event(comp.name, comp.detail)
                log.exception("%s failed to start", comp.name)
                self.stop()
                raise StartupError(comp.name, comp.detail, tail(self.log_path(comp.name))) from exc
            if self._stop.is_set() and comp.state not in ("running", "done", "external"):
                return False
            comp.startup_s = round(time.monotonic() - t0, 3)
            log.info("%s %s in %.2fs", comp.name, comp.state, comp.startup_s)
            self._changed()
        total = time.monotonic() - t_stack
        self.meta["startup_s"] = round(total, 3)
        self.meta["ready"] = True
        self._event("stack", f"up in {total:.1f}s")
        log.info("stack up in %.2fs", total)
        self._changed()
        return True

    def poll(self) -> None:
        """One monitoring pass: notice deaths, run due restarts, finish pending health checks."""
        now = time.monotonic()
        for comp in self._components:
            spec = comp.spec
            if isinstance(spec, StepSpec) or self._stop.is_set():
                continue
            if comp.state == "running":
                if not self._alive(comp):
                    self._on_death(comp)
                elif comp.failures_in_a_row and now - comp.started_mono > self.stable_after:
                    comp.failures_in_a_row = 0
            elif comp.state == "backoff" and now >= comp.next_restart:
                comp.restarts += 1
                self._event(comp.name, f"restart #{comp.restarts}")
                log.warning("restarting %s (restart #%d)", comp.name, comp.restarts)
                try:
                    self._spawn(comp)
                except Exception as exc:
                    log.exception("restart of %s failed", comp.name)
                    self._schedule_restart(comp, f"restart failed: {exc}")
            elif comp.state == "starting":
                self._advance_starting(comp, now)

    def run(self, *, on_tick: Callable[[], None] | None = None) -> None:
        """Start, then monitor until `request_stop()`; always stops everything on the way out."""
        try:
            if self.start():
                while not self._stop.is_set():
                    self.poll()
                    for watch in self._watchers:
                        watch()
                    if on_tick is not None:
                        on_tick()
                    self._stop.wait(self.poll_interval)
        finally:
            self.stop()

    def stop(self) -> None:
        """Stop everything in reverse order within `stop_timeout` seconds. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        self._stop.set()
        self.meta["ready"] = False
        self.meta["stopping"] = True
        deadline = time.monotonic() + self.stop_timeout
        t0 = time.monotonic()
        active = [c for c in self._components if c.state not in ("pending", "stopped")]
        for i, comp in enumerate(reversed(active)):
            remaining_after = len(active) - i - 1
            # Leave each later component a slice of the budget (at least half a second).
            budget = max(0.2, deadline - time.monotonic() - 0.5 * remaining_after)
            self._stop_one(comp, budget)
        elapsed = time.monotonic() - t0
        self.stop_seconds = round(elapsed, 3)
        self._event("stack", f"stopped in {elapsed:.1f}s")
        log.info("stack stopped in %.2fs", elapsed)
        self._changed()

    # --- control by watchers ---------------------------------------------------------------------
    def add_watcher(self, watch: Callable[[], None]) -> None:
        """Run `watch()` after every poll of `run()` (see the module docstring)."""
        self._watchers.append(watch)

    def signal_component(self, name: str, sig: int) -> int | None:
        """Send `sig` to a running child's process group; return its pid (None: no process)."""
        comp = self._get(name)
        if comp.proc is None or comp.proc.poll() is not None:
            return None
        signal_group(comp.proc.pid, sig)
        return comp.proc.pid

    def stop_component(self, name: str) -> None:
        """Stop one component (planned: it stays ``stopped`` until `start_component`)."""
        comp = self._get(name)
        if comp.state not in ("pending", "stopped"):
            self._stop_one(comp, self.stop_timeout)  # capped by the component's own stop_timeout

    def start_component(self, name: str) -> None:
        """Spawn a stopped component again; `poll()` finishes its health check (``starting``)."""
        comp = self._get(name)
        comp.failures_in_a_row = 0
        try:
            self._spawn(comp)
        except Exception as exc:
            log.exception("start of %s failed", name)
            self._schedule_restart(comp, f"start failed: {exc}")

    def note(self, name: str, text: str) -> None:
        """Add an event (status.json's recent events) on behalf of a watcher."""
        self._event(name, text)
        self._changed()

    def set_fields(self, name: str, **values: Any) -> None:
        """Extra fields of one component's status.json record (e.g. the broker's memory)."""
        self._get(name).fields.update(values)
        self._changed()

    def install_signal_handlers(self) -> None:
        """SIGTERM / SIGINT / SIGHUP request a stop (main thread only)."""

        def handler(signum: int, frame: FrameType | None) -> None:
            self.request_stop()

        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, handler)

    def __enter__(self) -> Supervisor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- starting -------------------------------------------------------------------------------
    def _start_initial(self, comp: ComponentState) -> None:
        spec = comp.spec
        if isinstance(spec, StepSpec):
            comp.state = "starting"
            self._changed()
            comp.detail = spec.run() or ""
            comp.state = spec.done_state
            comp.address = resolve_address(spec)
            comp.started_at = now_iso()
            self._event(comp.name, comp.detail or comp.state)
            return
        self._spawn(comp)
        while comp.state == "starting":
            if self._stop.is_set():
                return
            now = time.monotonic()
            if not self._alive(comp):
                comp.state = "failed"
                code = comp.proc.returncode if comp.proc is not None else None
                reason = "exited during start-up" + (f" with code {code}" if code is not None else "")
                self._event(comp.name, reason)
                raise StartupError(comp.name, reason, tail(self.log_path(comp.name)))
            if now > comp.deadline:
                self._terminate(comp, 2.0)
                comp.state = "failed"
                reason = f"not healthy after {spec.start_timeout:.0f}s"
                self._event(comp.name, reason)
                raise StartupError(comp.name, reason, tail(self.log_path(comp.name)))
            if self._healthy_now(comp, now):
                self._became_ready(comp)
                return
            self._monitor_others(exclude=comp)
            self._stop.wait(0.05)

    def _spawn(self, comp: ComponentState) -> None:
        spec = comp.spec
        comp.state = "starting"
        comp.started_at = now_iso()
        comp.started_mono = time.monotonic()
        comp.detail = ""
        if isinstance(spec, ComponentSpec):
            comp.deadline = comp.started_mono + spec.start_timeout
            if spec.before_start is not None:
                spec.before_start()
            env = dict(os.environ) if spec.inherit_env else {}
            env.update(spec.env() if callable(spec.env) else spec.env)
            env.setdefault("PYTHONUNBUFFERED", "1")
            path = self.log_path(spec.name)
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "ab") as out:
                out.write(f"--- {comp.started_at} supervisor: starting {spec.name}\n".encode())
                out.flush()
                comp.proc = subprocess.Popen(  # noqa: S603 - argv from trusted specs, no shell
                    list(spec.argv),
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    cwd=spec.cwd,
                    env=env,
                    start_new_session=True,
                )
            comp.create_time = create_time(comp.proc.pid)
            self._event(comp.name, f"spawned pid {comp.proc.pid}")
        elif isinstance(spec, ManagedSpec):
            comp.deadline = comp.started_mono + spec.start_timeout
            address = spec.start()
            if address:
                comp.address = address
            comp.managed_pid = spec.pid()
            comp.create_time = create_time(comp.managed_pid) if comp.managed_pid else None
            self._event(comp.name, f"started (pid {comp.managed_pid})")
        comp.address = comp.address or resolve_address(spec)
        self._changed()

    def _healthy_now(self, comp: ComponentState, now: float) -> bool:
        spec = comp.spec
        if isinstance(spec, StepSpec):
            return True
        if spec.health is None:
            min_uptime = spec.min_uptime if isinstance(spec, ComponentSpec) else 0.0
            return now - comp.started_mono >= min_uptime
        return check_health(spec.health)

    def _became_ready(self, comp: ComponentState) -> None:
        spec = comp.spec
        if isinstance(spec, StepSpec):
            return
        if spec.on_ready is not None:
            t0 = time.monotonic()
            spec.on_ready()
            log.info("%s: ready hook done in %.2fs", comp.name, time.monotonic() - t0)
        comp.state = "running"
        comp.address = resolve_address(spec) or comp.address
        if isinstance(spec, ManagedSpec):
            comp.managed_pid = spec.pid()
        self._event(comp.name, f"running (pid {comp.pid})")
        self._changed()

    def _advance_starting(self, comp: ComponentState, now: float) -> None:
        """Non-blocking health progress of a restarted component."""
        if not self._alive(comp):
            self._on_death(comp)
            return
        if now > comp.deadline:
            self._terminate(comp, 2.0)
            self._schedule_restart(comp, "not healthy in time after restart")
            return
        if self._healthy_now(comp, now):
            try:
                self._became_ready(comp)
            except Exception as exc:
                log.exception("ready hook of %s failed", comp.name)
                self._terminate(comp, 2.0)
                self._schedule_restart(comp, f"ready hook failed: {exc}")

    # --- watching -------------------------------------------------------------------------------
    def _alive(self, comp: ComponentState) -> bool:
        spec = comp.spec
        if isinstance(spec, ComponentSpec):
            return comp.proc is not None and comp.proc.poll() is None
        if isinstance(spec, ManagedSpec):
            pid = spec.pid()
            if pid is not None:
                comp.managed_pid = pid
            return pid is not None
        return True

    def _monitor_others(self, *, exclude: ComponentState) -> None:
        for comp in self._components:
            if comp is not exclude and comp.state == "running" and not self._alive(comp):
                self._on_death(comp)

    def _on_death(self, comp: ComponentState) -> None:
        spec = comp.spec
        if isinstance(spec, StepSpec):
            return
        code = comp.proc.returncode if comp.proc is not None else None
        comp.last_exit = code
        if comp.proc is not None:
            # The leader is gone; make sure no member of its group lingers.
            signal_group(comp.proc.pid, signal.SIGKILL)
        reason = "exited" + (f" with code {code}" if code is not None else "")
        log.warning("%s %s; log tail:\n%s", comp.name, reason, tail(self.log_path(comp.name), 10))
        if spec.restart:
            self._schedule_restart(comp, reason)
        else:
            comp.state = "failed"
            comp.detail = reason
            self._event(comp.name, f"{reason}; not restarted")
            self._changed()

    def _schedule_restart(self, comp: ComponentState, reason: str) -> None:
        comp.failures_in_a_row += 1
        delay = exponential_delay(comp.failures_in_a_row, base_s=self.backoff_base, cap_s=self.backoff_max)
        comp.state = "backoff"
        comp.detail = f"{reason}; restart in {delay:.1f}s"
        comp.next_restart = time.monotonic() + delay
        comp.managed_pid = None
        self._event(comp.name, comp.detail)
        log.warning("%s %s; restarting in %.1fs", comp.name, reason, delay)
        self._changed()

    # --- stopping -------------------------------------------------------------------------------
    def _stop_one(self, comp: ComponentState, budget: float) -> None:
        spec = comp.spec
        if isinstance(spec, StepSpec):
            return
        if comp.state in ("backoff", "failed") and (
            (comp.proc is not None and comp.proc.poll() is not None and not group_alive(comp.proc.pid))
            or (comp.proc is None and comp.managed_pid is None)
        ):
            comp.state = "stopped"
            return
        comp.state = "stopping"
        self._changed()
        t0 = time.monotonic()
        timeout = min(spec.stop_timeout, budget)
        if isinstance(spec, ComponentSpec):
            self._terminate(comp, timeout)
        else:
            try:
                spec.stop(timeout)
            except Exception:
                log.exception("stopping %s failed", comp.name)
            comp.managed_pid = None
        comp.state = "stopped"
        self._event(comp.name, f"stopped in {time.monotonic() - t0:.1f}s")
        log.info("%s stopped in %.2fs", comp.name, time.monotonic() - t0)
        self._changed()

    def _terminate(self, comp: ComponentState, timeout: float) -> None:
        """Stop a child's whole process group (`stop_group`) and note how it went."""
        proc = comp.proc
        if proc is None:
            return
        outcome = stop_group(proc, timeout, hurry=lambda: self._hurry)
        if outcome.sigkilled:
            log.warning("%s did not stop within %.1fs: SIGKILL", comp.name, timeout)
            self._event(comp.name, f"SIGKILL after {timeout:.1f}s")
        if outcome.stragglers:
            log.warning(
                "%s: killed %d descendant(s) that left its process group", comp.name, outcome.stragglers
            )
        comp.last_exit = proc.returncode

    # --- bookkeeping ------------------------------------------------------------------------------
    def _get(self, name: str) -> ComponentState:
        for comp in self._components:
            if comp.name == name:
                return comp
        raise KeyError(name)

    def _record_of(self, comp: ComponentState) -> dict[str, Any]:
        log_path = None if isinstance(comp.spec, StepSpec) else self.log_path(comp.name)
        return comp.record(log_path)

    def _event(self, name: str, text: str) -> None:
        self.events.append({"ts": now_iso(), "component": name, "event": text})

    def _changed(self) -> None:
        with self._write_lock:
            try:
                write_json_atomic(self.status_path, self.snapshot())
            except OSError:
                log.exception("could not write %s", self.status_path)
        if self.listener is not None:
            try:
                self.listener()
            except Exception:
                log.exception("status listener failed")
