"""A small process supervisor for the local platform (`mw up`), independent of Market Watch.

Contract:
- A `Supervisor` runs an ordered list of specs: `ComponentSpec` (a child process the supervisor
  spawns), `ManagedSpec` (a server started/stopped by callables, e.g. the embedded PostgreSQL whose
  postmaster `pg_ctl` daemonises) and `StepSpec` (a one-shot task such as applying the schema).
  `start()` starts them in order and waits for each one's health check before the next.
- Child processes run in their OWN process group and session (``start_new_session=True``), so a
  Ctrl-C in the terminal reaches only the supervisor, which then stops everything in order; their
  stdout/stderr go to ``state_dir/logs/<name>.log``.
- A component that dies while the stack runs is restarted with exponential backoff when its spec
  says ``restart=True``; every restart is logged and counted. A component that stays up for
  ``stable_after`` seconds has its backoff reset.
- `stop()` stops in reverse order: SIGTERM to the process group, wait (services flush and commit on
  SIGTERM), SIGKILL after the component's timeout, all within one overall budget (15 s by
  default). Descendants that left the group are killed too, so no orphan process survives.
- ``state_dir/status.json`` (written atomically on every change) holds each component's state,
  address, pid, restart count and start time; addresses never contain passwords (callers redact).
- `StackLock` is the pid file ``state_dir/supervisor.pid`` held with `flock`: a second supervisor
  on the same state dir gets `AlreadyRunning` naming the live pid; a stale file (dead pid) is
  cleaned. `down(state_dir)` stops a stack started by another process (SIGTERM to the supervisor,
  wait) and cleans up what a crashed supervisor left behind.
- Single-threaded: the caller's thread runs start/poll/stop; signal handlers only set a flag.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import KW_ONLY, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any, Literal, TypeAlias

import psutil

log = logging.getLogger(__name__)

HealthCheck: TypeAlias = Callable[[], bool] | tuple[str, int] | str | None
EnvSource: TypeAlias = Mapping[str, str] | Callable[[], Mapping[str, str]]
State = Literal[
    "pending", "starting", "running", "backoff", "failed", "stopping", "stopped", "done", "external"
]

STATUS_FILE = "status.json"
PID_FILE = "supervisor.pid"
LOG_DIR = "logs"
DEFAULT_STOP_TIMEOUT = 15.0


class StartupError(RuntimeError):
    """A component did not become healthy during `Supervisor.start()`."""

    def __init__(self, name: str, reason: str, log_tail: str = "") -> None:
        self.component = name
        self.reason = reason
        self.log_tail = log_tail
        super().__init__(f"{name}: {reason}")


class AlreadyRunning(RuntimeError):
    """Another supervisor holds the lock on this state dir."""

    def __init__(self, pid: int, info: Mapping[str, Any]) -> None:
        self.pid = pid
        self.info = dict(info)
        super().__init__(f"a stack is already running on this state dir (supervisor pid {pid})")


# --- specs -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ComponentSpec:
    """A child process.

    Attributes:
        name: Component name (also the log file name).
        argv: Command line; no shell.
        env: Extra environment (merged over the supervisor's unless `inherit_env` is false), or a
            callable evaluated at every (re)spawn so it can use values known only after earlier
            components started.
        cwd: Working directory.
        health: ``None`` (alive for `min_uptime` seconds), ``(host, port)`` (TCP connect), an
            ``http(s)://`` URL (2xx answer) or a callable returning bool.
        start_timeout: Seconds to become healthy.
        restart: Restart with backoff when it dies while the stack runs.
        stop_timeout: Seconds between SIGTERM and SIGKILL (capped by the overall stop budget).
        address: What `status` shows (never a password).
        before_start: Called before every spawn (e.g. remove a stale ready file).
        on_ready: Called after every successful health check (e.g. re-create topics).
    """

    name: str
    argv: Sequence[str]
    _: KW_ONLY
    env: EnvSource = field(default_factory=dict)
    cwd: Path | None = None
    health: HealthCheck = None
    start_timeout: float = 30.0
    restart: bool = True
    stop_timeout: float = 5.0
    address: str | Callable[[], str] = ""
    inherit_env: bool = True
    min_uptime: float = 0.5
    before_start: Callable[[], None] | None = None
    on_ready: Callable[[], None] | None = None


@dataclass(frozen=True)
class ManagedSpec:
    """A server whose lifecycle callables live elsewhere (embedded PostgreSQL, embedded broker).

    `start` returns the address to show (or None to keep `address`); `pid` returns the server's
    pid while it runs; `stop` receives its time budget in seconds. `orphan_signal` is what `down`
    sends when a crashed supervisor left the server running (SIGINT = PostgreSQL fast shutdown).
    """

    name: str
    start: Callable[[], str | None]
    stop: Callable[[float], None]
    pid: Callable[[], int | None]
    _: KW_ONLY
    health: HealthCheck = None
    start_timeout: float = 60.0
    restart: bool = True
    stop_timeout: float = 5.0
    address: str | Callable[[], str] = ""
    log: Path | None = None
    orphan_signal: int = signal.SIGTERM
    on_ready: Callable[[], None] | None = None


@dataclass(frozen=True)
class StepSpec:
    """A one-shot task run in order; `run` returns a short detail for the status table."""

    name: str
    run: Callable[[], str | None]
    _: KW_ONLY
    address: str | Callable[[], str] = ""
    done_state: State = "done"


Spec: TypeAlias = ComponentSpec | ManagedSpec | StepSpec


# --- health checks ------------------------------------------------------------------------------


def tcp_ok(host: str, port: int, *, timeout: float = 0.5) -> bool:
    """True when `host:port` accepts a TCP connection."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


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
            return tcp_ok(health[0], int(health[1]), timeout=timeout)
        if isinstance(health, str):
            return http_ok(health, timeout=timeout)
        return bool(health())
    except Exception as exc:
        log.debug("health check raised %r", exc)
        return False


def backoff_delay(attempt: int, *, base: float = 0.5, cap: float = 30.0) -> float:
    """Delay before restart number `attempt` (1-based) of a run of consecutive failures."""
    return float(min(cap, base * (2 ** max(0, attempt - 1))))


# --- process helpers ------------------------------------------------------------------------------


def pid_alive(pid: int, create_time: float | None = None) -> bool:
    """True when `pid` runs (and, when given, was created at `create_time`: no reused pid)."""
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        return create_time is None or abs(proc.create_time() - create_time) < 1.0
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def _create_time(pid: int) -> float | None:
    try:
        return float(psutil.Process(pid).create_time())
    except psutil.Error:
        return None


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # killpg(0) succeeds while zombies remain; only live members count.
    return any(_pgid_of(p) == pgid for p in _live_procs())


def _live_procs() -> Iterator[psutil.Process]:
    for proc in psutil.process_iter(["status"]):
        with contextlib.suppress(psutil.Error):
            if proc.info["status"] != psutil.STATUS_ZOMBIE:
                yield proc


def _pgid_of(proc: psutil.Process) -> int | None:
    try:
        return os.getpgid(proc.pid)
    except (ProcessLookupError, PermissionError):
        return None


def _signal_group(pgid: int, sig: int) -> None:
    if pgid <= 1 or pgid == os.getpgrp():  # never signal ourselves or init by accident
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return list(psutil.Process(pid).children(recursive=True))
    except psutil.Error:
        return []


def _gone(proc: psutil.Process) -> bool:
    """Exited (a zombie counts: its reaper may be a busy or non-reaping init)."""
    try:
        return not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE
    except psutil.Error:
        return True


def wait_gone(procs: Sequence[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Wait until every process exited; return those still alive after `timeout`."""
    deadline = time.monotonic() + timeout
    alive = [p for p in procs if not _gone(p)]
    while alive and time.monotonic() < deadline:
        time.sleep(0.05)
        alive = [p for p in alive if not _gone(p)]
    return alive


def _kill_stragglers(procs: Sequence[psutil.Process]) -> int:
    killed = 0
    for proc in procs:
        if not _gone(proc):
            with contextlib.suppress(psutil.Error):
                proc.kill()
                killed += 1
    if killed:
        wait_gone(procs, 2)
    return killed


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def tail(path: Path, lines: int = 20) -> str:
    """The last `lines` lines of a text file ('' when missing)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 64 * 1024))
            data = fh.read()
    except OSError:
        return ""
    return "\n".join(data.decode("utf-8", "replace").splitlines()[-lines:])


def _write_json_atomic(path: Path, data: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


# --- runtime records ---------------------------------------------------------------------------------


@dataclass
class _Runtime:
    spec: Spec
    state: State = "pending"
    proc: subprocess.Popen[bytes] | None = None
    managed_pid: int | None = None
    create_time: float | None = None
    restarts: int = 0
    failures_in_a_row: int = 0
    started_at: str | None = None
    started_mono: float = 0.0
    deadline: float = 0.0
    next_restart: float = 0.0
    startup_s: float | None = None
    last_exit: int | None = None
    detail: str = ""
    address: str = ""

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def kind(self) -> str:
        return {ComponentSpec: "process", ManagedSpec: "managed", StepSpec: "step"}[type(self.spec)]

    @property
    def pid(self) -> int | None:
        if self.proc is not None:
            return self.proc.pid if self.proc.poll() is None else None
        return self.managed_pid


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
        self.started_at = _now_iso()
        self.events: deque[dict[str, str]] = deque(maxlen=50)
        self._components = [_Runtime(spec=s, address=self._address(s)) for s in specs]
        self._stop = threading.Event()
        self._hurry = False
        self._stopped = False
        self._write_lock = threading.Lock()
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
        return self._record(self._get(name))

    def snapshot(self) -> dict[str, Any]:
        """The content of status.json."""
        return {
            "supervisor": {
                "pid": os.getpid(),
                "create_time": _create_time(os.getpid()),
                "started_at": self.started_at,
                "state_dir": str(self.state_dir),
            },
            "updated_at": _now_iso(),
            "meta": {**(self._meta_source() if self._meta_source else {}), **self.meta},
            "components": [self._record(c) for c in self._components],
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
    def _start_initial(self, comp: _Runtime) -> None:
        spec = comp.spec
        if isinstance(spec, StepSpec):
            comp.state = "starting"
            self._changed()
            comp.detail = spec.run() or ""
            comp.state = spec.done_state
            comp.address = self._address(spec)
            comp.started_at = _now_iso()
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

    def _spawn(self, comp: _Runtime) -> None:
        spec = comp.spec
        comp.state = "starting"
        comp.started_at = _now_iso()
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
            comp.create_time = _create_time(comp.proc.pid)
            self._event(comp.name, f"spawned pid {comp.proc.pid}")
        elif isinstance(spec, ManagedSpec):
            comp.deadline = comp.started_mono + spec.start_timeout
            address = spec.start()
            if address:
                comp.address = address
            comp.managed_pid = spec.pid()
            comp.create_time = _create_time(comp.managed_pid) if comp.managed_pid else None
            self._event(comp.name, f"started (pid {comp.managed_pid})")
        comp.address = comp.address or self._address(spec)
        self._changed()

    def _healthy_now(self, comp: _Runtime, now: float) -> bool:
        spec = comp.spec
        if isinstance(spec, StepSpec):
            return True
        if spec.health is None:
            min_uptime = spec.min_uptime if isinstance(spec, ComponentSpec) else 0.0
            return now - comp.started_mono >= min_uptime
        return check_health(spec.health)

    def _became_ready(self, comp: _Runtime) -> None:
        spec = comp.spec
        if isinstance(spec, StepSpec):
            return
        if spec.on_ready is not None:
            t0 = time.monotonic()
            spec.on_ready()
            log.info("%s: ready hook done in %.2fs", comp.name, time.monotonic() - t0)
        comp.state = "running"
        comp.address = self._address(spec) or comp.address
        if isinstance(spec, ManagedSpec):
            comp.managed_pid = spec.pid()
        self._event(comp.name, f"running (pid {comp.pid})")
        self._changed()

    def _advance_starting(self, comp: _Runtime, now: float) -> None:
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
    def _alive(self, comp: _Runtime) -> bool:
        spec = comp.spec
        if isinstance(spec, ComponentSpec):
            return comp.proc is not None and comp.proc.poll() is None
        if isinstance(spec, ManagedSpec):
            pid = spec.pid()
            if pid is not None:
                comp.managed_pid = pid
            return pid is not None
        return True

    def _monitor_others(self, *, exclude: _Runtime) -> None:
        for comp in self._components:
            if comp is not exclude and comp.state == "running" and not self._alive(comp):
                self._on_death(comp)

    def _on_death(self, comp: _Runtime) -> None:
        spec = comp.spec
        if isinstance(spec, StepSpec):
            return
        code = comp.proc.returncode if comp.proc is not None else None
        comp.last_exit = code
        if comp.proc is not None:
            # The leader is gone; make sure no member of its group lingers.
            _signal_group(comp.proc.pid, signal.SIGKILL)
        reason = "exited" + (f" with code {code}" if code is not None else "")
        log.warning("%s %s; log tail:\n%s", comp.name, reason, tail(self.log_path(comp.name), 10))
        if spec.restart:
            self._schedule_restart(comp, reason)
        else:
            comp.state = "failed"
            comp.detail = reason
            self._event(comp.name, f"{reason}; not restarted")
            self._changed()

    def _schedule_restart(self, comp: _Runtime, reason: str) -> None:
        comp.failures_in_a_row += 1
        delay = backoff_delay(comp.failures_in_a_row, base=self.backoff_base, cap=self.backoff_max)
        comp.state = "backoff"
        comp.detail = f"{reason}; restart in {delay:.1f}s"
        comp.next_restart = time.monotonic() + delay
        comp.managed_pid = None
        self._event(comp.name, comp.detail)
        log.warning("%s %s; restarting in %.1fs", comp.name, reason, delay)
        self._changed()

    # --- stopping -------------------------------------------------------------------------------
    def _stop_one(self, comp: _Runtime, budget: float) -> None:
        spec = comp.spec
        if isinstance(spec, StepSpec):
            return
        if comp.state in ("backoff", "failed") and (
            (comp.proc is not None and comp.proc.poll() is not None and not _group_alive(comp.proc.pid))
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

    def _terminate(self, comp: _Runtime, timeout: float) -> None:
        """SIGTERM the process group, wait, SIGKILL; then kill descendants that left the group."""
        proc = comp.proc
        if proc is None:
            return
        pgid = proc.pid
        family = _descendants(proc.pid)
        if proc.poll() is None:
            _signal_group(pgid, signal.SIGKILL if self._hurry else signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self._hurry:
            if proc.poll() is not None and not _group_alive(pgid):
                break
            time.sleep(0.05)
        else:
            if proc.poll() is None or _group_alive(pgid):
                log.warning("%s did not stop within %.1fs: SIGKILL", comp.name, timeout)
                self._event(comp.name, f"SIGKILL after {timeout:.1f}s")
        _signal_group(pgid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=2)
        killed = _kill_stragglers(family)
        if killed:
            log.warning("%s: killed %d descendant(s) that left its process group", comp.name, killed)
        comp.last_exit = proc.returncode

    # --- bookkeeping ------------------------------------------------------------------------------
    def _get(self, name: str) -> _Runtime:
        for comp in self._components:
            if comp.name == name:
                return comp
        raise KeyError(name)

    @staticmethod
    def _address(spec: Spec) -> str:
        address = spec.address
        if callable(address):
            try:
                return address()
            except Exception:
                return ""
        return address

    def _record(self, comp: _Runtime) -> dict[str, Any]:
        pid = comp.pid
        spec = comp.spec
        return {
            "component": comp.name,
            "kind": comp.kind,
            "state": comp.state,
            "address": comp.address,
            "pid": pid,
            "create_time": comp.create_time if pid is not None else None,
            "restarts": comp.restarts,
            "started_at": comp.started_at,
            "startup_s": comp.startup_s,
            "last_exit": comp.last_exit,
            "detail": comp.detail,
            "log": None if isinstance(spec, StepSpec) else str(self.log_path(comp.name)),
            "orphan_signal": int(spec.orphan_signal)
            if isinstance(spec, ManagedSpec)
            else int(signal.SIGTERM),
            "group": isinstance(spec, ComponentSpec),
        }

    def _event(self, name: str, text: str) -> None:
        self.events.append({"ts": _now_iso(), "component": name, "event": text})

    def _changed(self) -> None:
        with self._write_lock:
            try:
                _write_json_atomic(self.status_path, self.snapshot())
            except OSError:
                log.exception("could not write %s", self.status_path)
        if self.listener is not None:
            try:
                self.listener()
            except Exception:
                log.exception("status listener failed")


# --- lock / pid file ---------------------------------------------------------------------------------


class StackLock:
    """Exclusive ownership of a state dir: `flock` on ``supervisor.pid`` holding our pid as JSON."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = Path(state_dir).absolute()
        self.path = self.state_dir / PID_FILE
        self._fd: int | None = None

    @classmethod
    def acquire(cls, state_dir: Path, **info: Any) -> StackLock:
        """Take the lock or raise `AlreadyRunning`. A stale pid file (dead owner) is replaced."""
        lock = cls(state_dir)
        lock._acquire(info)
        return lock

    def _acquire(self, info: Mapping[str, Any]) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        for _ in range(10):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                owner = read_pid_file(self.state_dir)
                pid = int(owner["pid"]) if owner and "pid" in owner else -1
                raise AlreadyRunning(pid, owner or {}) from None
            # The previous owner may have unlinked the file between our open and flock.
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            previous = _read_fd_json(fd)
            if previous and isinstance(previous.get("pid"), int) and previous["pid"] != os.getpid():
                if pid_alive(previous["pid"], previous.get("create_time")):
                    # Alive but not holding the lock: another tool wrote it; refuse to fight it.
                    os.close(fd)
                    raise AlreadyRunning(previous["pid"], previous)
                log.info("removing stale pid file of dead supervisor %s", previous["pid"])
            data = {
                "pid": os.getpid(),
                "create_time": _create_time(os.getpid()),
                "started_at": _now_iso(),
                **info,
            }
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(data, default=str) + "\n").encode(), 0)
            self._fd = fd
            return
        raise RuntimeError(f"could not lock {self.path}")

    def update(self, **info: Any) -> None:
        """Merge `info` into the pid file (e.g. the Dagster URL once known)."""
        if self._fd is None:
            return
        data = {**(_read_fd_json(self._fd) or {}), **info}
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, (json.dumps(data, default=str) + "\n").encode(), 0)

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> StackLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read_fd_json(fd: int) -> dict[str, Any] | None:
    try:
        raw = os.pread(fd, 65536, 0)
        data = json.loads(raw.decode() or "null")
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def read_pid_file(state_dir: Path) -> dict[str, Any] | None:
    return read_json(Path(state_dir) / PID_FILE)


def running_supervisor(state_dir: Path) -> int | None:
    """Pid of the live supervisor owning `state_dir`, or None (stale files do not count)."""
    info = read_pid_file(state_dir)
    if not info or not isinstance(info.get("pid"), int):
        return None
    return info["pid"] if pid_alive(info["pid"], info.get("create_time")) else None


def read_status(state_dir: Path) -> dict[str, Any] | None:
    """status.json annotated with ``running`` (is its supervisor alive?) and per-component liveness.

    Components of a dead supervisor are reported with state ``stale`` when their process still
    runs and ``gone`` when not.
    """
    status = read_json(Path(state_dir) / STATUS_FILE)
    if status is None:
        return None
    sup = status.get("supervisor", {})
    running = isinstance(sup.get("pid"), int) and pid_alive(sup["pid"], sup.get("create_time"))
    status["running"] = running
    if not running:
        for comp in status.get("components", []):
            pid = comp.get("pid")
            if comp.get("state") in ("stopped", "done", "external", "pending"):
                continue
            alive = isinstance(pid, int) and pid_alive(pid, comp.get("create_time"))
            comp["state"] = "stale" if alive else "gone"
    return status


@dataclass(frozen=True, slots=True)
class DownResult:
    was_running: bool
    supervisor_pid: int | None
    stopped: bool
    seconds: float
    cleaned: tuple[str, ...] = ()


def cleanup_stale(state_dir: Path, *, timeout: float = 5.0) -> list[str]:
    """Stop components a dead supervisor left running (from status.json); return their names.

    Only processes whose pid *and* creation time match the recorded ones are signalled.
    """
    status = read_json(Path(state_dir) / STATUS_FILE)
    if status is None:
        return []
    sup = status.get("supervisor", {})
    if isinstance(sup.get("pid"), int) and pid_alive(sup["pid"], sup.get("create_time")):
        return []  # its supervisor is alive: not stale
    targets: list[tuple[str, psutil.Process, int | None]] = []
    for comp in reversed(status.get("components", [])):
        pid = comp.get("pid")
        if not isinstance(pid, int) or not pid_alive(pid, comp.get("create_time")):
            continue
        try:
            proc = psutil.Process(pid)
        except psutil.Error:
            continue
        family = [proc, *_descendants(pid)]
        pgid = pid if comp.get("group") else None
        sig = int(comp.get("orphan_signal") or signal.SIGTERM)
        log.warning("stopping leftover %s (pid %s) of a dead supervisor", comp.get("component"), pid)
        if pgid is not None:
            _signal_group(pgid, sig)
        else:
            with contextlib.suppress(psutil.Error):
                proc.send_signal(sig)
        alive = wait_gone([proc], timeout)
        if alive or (pgid is not None and _group_alive(pgid)):
            if pgid is not None:
                _signal_group(pgid, signal.SIGKILL)
            _kill_stragglers(family)
        else:
            _kill_stragglers(family[1:])
        targets.append((str(comp.get("component")), proc, pgid))
    return [name for name, _, _ in targets]


def down(state_dir: Path, *, timeout: float = 25.0) -> DownResult:
    """Stop the stack that owns `state_dir` from another process.

    SIGTERM the supervisor (it stops its components in order) and wait up to `timeout`; if it does
    not exit, SIGKILL it and stop its leftover components directly. With no live supervisor, only
    leftovers of a crashed one are cleaned, and stale pid/status files are fixed.
    """
    t0 = time.monotonic()
    state_dir = Path(state_dir)
    info = read_pid_file(state_dir)
    pid = running_supervisor(state_dir)
    if pid is None:
        cleaned = cleanup_stale(state_dir)
        if info is not None:
            with contextlib.suppress(FileNotFoundError):
                (state_dir / PID_FILE).unlink()
        return DownResult(False, None, True, time.monotonic() - t0, tuple(cleaned))
    try:
        supervisor = psutil.Process(pid)
        os.kill(pid, signal.SIGTERM)
        stopped = not wait_gone([supervisor], timeout)
    except (psutil.NoSuchProcess, ProcessLookupError):
        stopped = True
    leftovers: list[str] = []
    if not stopped:
        log.warning("supervisor %s did not stop in %.0fs: SIGKILL and direct clean-up", pid, timeout)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        wait_gone([supervisor], 5)
        leftovers = cleanup_stale(state_dir)
        with contextlib.suppress(FileNotFoundError):
            (state_dir / PID_FILE).unlink()
    return DownResult(True, pid, stopped, time.monotonic() - t0, tuple(leftovers))
