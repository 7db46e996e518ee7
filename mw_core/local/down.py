"""`mw down`: stop a stack from another process, and clean up after a crashed supervisor.

Contract:
- `down(state_dir)` sends SIGTERM to the supervisor that owns `state_dir` (it stops its components
  in reverse order) and waits; if it does not exit in time it is killed and its components are
  stopped directly. With no live supervisor, only leftovers of a crashed one are stopped and the
  stale pid file is removed.
- `cleanup_stale` signals only processes whose pid AND creation time match the ones recorded in
  status.json: a reused pid is never hit. Each leftover gets its recorded ``orphan_signal``
  (SIGINT for PostgreSQL's fast shutdown), then SIGKILL, and its descendants are killed too.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from mw_core.adapters.processes import pid_alive
from mw_core.local.processes import descendants, group_alive, kill_stragglers, signal_group, wait_gone
from mw_core.local.state_files import (
    PID_FILE,
    STATUS_FILE,
    read_json,
    read_pid_file,
    running_supervisor,
    supervisor_alive,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class DownResult:
    """What `down` found and did: ``stopped`` is False when the supervisor had to be killed."""

    was_running: bool
    supervisor_pid: int | None
    stopped: bool
    seconds: float
    cleaned: tuple[str, ...] = ()


def cleanup_stale(state_dir: Path, *, timeout: float = 5.0) -> list[str]:
    """Stop components a dead supervisor left running (from status.json); return their names."""
    status = read_json(Path(state_dir) / STATUS_FILE)
    if status is None or supervisor_alive(status):
        return []  # nothing recorded, or its supervisor is alive: not stale
    cleaned: list[str] = []
    for comp in reversed(status.get("components", [])):
        pid = comp.get("pid")
        if not isinstance(pid, int) or not pid_alive(pid, comp.get("create_time")):
            continue
        try:
            proc = psutil.Process(pid)
        except psutil.Error:
            continue
        family = [proc, *descendants(pid)]
        pgid = pid if comp.get("group") else None
        sig = int(comp.get("orphan_signal") or signal.SIGTERM)
        log.warning("stopping leftover %s (pid %s) of a dead supervisor", comp.get("component"), pid)
        if pgid is not None:
            signal_group(pgid, sig)
            signal_group(pgid, signal.SIGCONT)  # a producer paused by a broker rollover handles it
        else:
            with contextlib.suppress(psutil.Error):
                proc.send_signal(sig)
        alive = wait_gone([proc], timeout)
        if alive or (pgid is not None and group_alive(pgid)):
            if pgid is not None:
                signal_group(pgid, signal.SIGKILL)
            kill_stragglers(family)
        else:
            kill_stragglers(family[1:])
        cleaned.append(str(comp.get("component")))
    return cleaned


def down(state_dir: Path, *, timeout: float = 25.0) -> DownResult:
    """Stop the stack that owns `state_dir` from another process (see the module docstring)."""
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
