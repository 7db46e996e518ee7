"""What a `Supervisor` runs: three kinds of spec, declared up front, started in list order.

Contract:
- `ComponentSpec`: a child process the supervisor spawns in its own process group and session
  (a Ctrl-C in the terminal reaches only the supervisor); stdout/stderr go to
  ``state_dir/logs/<name>.log``.
- `ManagedSpec`: a server whose lifecycle callables live elsewhere (the embedded PostgreSQL, whose
  postmaster `pg_ctl` daemonises; the embedded broker).
- `StepSpec`: a one-shot task (apply the schema, check an external server).
- Specs are frozen values; callables in them (env, address, hooks) are evaluated by the
  supervisor when needed, so values known only after earlier components started can be used.
- Addresses never contain passwords: the callers redact them.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Mapping, Sequence
from dataclasses import KW_ONLY, dataclass, field
from pathlib import Path
from typing import Literal, TypeAlias

from mw_core.local.probes import HealthCheck

EnvSource: TypeAlias = Mapping[str, str] | Callable[[], Mapping[str, str]]
State = Literal[
    "pending", "starting", "running", "backoff", "failed", "stopping", "stopped", "done", "external"
]


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


def resolve_address(spec: Spec) -> str:
    """The address a spec shows now ('' while a callable address cannot be computed yet)."""
    address = spec.address
    if callable(address):
        try:
            return address()
        except Exception:
            return ""
    return address
