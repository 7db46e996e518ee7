"""What one supervised component is doing right now, and how status.json shows it.

Contract: `ComponentState` is the supervisor's mutable record of one spec (state, process, pid
and its creation time, restart counters, timings); `record()` is its status.json entry, which
carries what `mw down` needs to stop a leftover of a crashed supervisor (pid + creation time,
process group or not, the signal to send), plus the extra `fields` a watcher set (the broker's
memory and rollovers).
"""

from __future__ import annotations

import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mw_core.local.specs import ComponentSpec, ManagedSpec, Spec, State, StepSpec


@dataclass
class ComponentState:
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
    fields: dict[str, Any] = field(default_factory=dict)  # extra status fields set by watchers

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

    def record(self, log_path: Path | None) -> dict[str, Any]:
        """The status.json entry of this component."""
        pid = self.pid
        spec = self.spec
        return {
            "component": self.name,
            "kind": self.kind,
            "state": self.state,
            "address": self.address,
            "pid": pid,
            "create_time": self.create_time if pid is not None else None,
            "restarts": self.restarts,
            "started_at": self.started_at,
            "startup_s": self.startup_s,
            "last_exit": self.last_exit,
            "detail": self.detail,
            "log": str(log_path) if log_path is not None else None,
            "orphan_signal": int(spec.orphan_signal if isinstance(spec, ManagedSpec) else signal.SIGTERM),
            "group": isinstance(spec, ComponentSpec),
            **self.fields,
        }
