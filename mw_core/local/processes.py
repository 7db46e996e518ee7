"""Process groups of supervised children: signal, wait, and leave no orphan behind.

Contract:
- A child of the supervisor leads its own process group (``start_new_session=True``), so its
  pgid is its pid. `signal_group` never signals our own group or init, whatever it is given.
- A process "is gone" once it exited; a zombie counts as gone (its reaper may be a busy or
  non-reaping init).
- `stop_group` is the whole stop of one child: SIGTERM to its group, wait, SIGKILL, then kill
  descendants that left the group (a grandchild in a new session), so nothing survives it.
- Whether a pid is still the process we mean is `mw_core.adapters.processes.pid_alive`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import psutil


def group_alive(pgid: int) -> bool:
    """True while a live (non-zombie) process is a member of process group `pgid`."""
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


def signal_group(pgid: int, sig: int) -> None:
    """Send `sig` to process group `pgid`; a group that is gone or not ours is left alone."""
    if pgid <= 1 or pgid == os.getpgrp():  # never signal ourselves or init by accident
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def descendants(pid: int) -> list[psutil.Process]:
    """Children of `pid`, recursively ([] when it is gone)."""
    try:
        return list(psutil.Process(pid).children(recursive=True))
    except psutil.Error:
        return []


def _gone(proc: psutil.Process) -> bool:
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


def kill_stragglers(procs: Sequence[psutil.Process]) -> int:
    """SIGKILL whichever of `procs` still runs; return how many were killed."""
    killed = 0
    for proc in procs:
        if not _gone(proc):
            with contextlib.suppress(psutil.Error):
                proc.kill()
                killed += 1
    if killed:
        wait_gone(procs, 2)
    return killed


@dataclass(frozen=True, slots=True)
class GroupStop:
    """How a `stop_group` went: was SIGKILL needed, how many escaped descendants were killed."""

    sigkilled: bool
    stragglers: int


def stop_group(proc: subprocess.Popen[bytes], timeout: float, *, hurry: Callable[[], bool]) -> GroupStop:
    """SIGTERM the group `proc` leads, wait up to `timeout`, SIGKILL; then kill escaped descendants.

    ``hurry()`` is re-read while waiting: once true (a second Ctrl-C), SIGKILL comes at once.
    """
    pgid = proc.pid
    family = descendants(proc.pid)
    if proc.poll() is None:
        signal_group(pgid, signal.SIGKILL if hurry() else signal.SIGTERM)
        signal_group(pgid, signal.SIGCONT)  # a stopped group (broker rollover) must see the SIGTERM
    sigkilled = False
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not hurry():
        if proc.poll() is not None and not group_alive(pgid):
            break
        time.sleep(0.05)
    else:
        sigkilled = proc.poll() is None or group_alive(pgid)
    signal_group(pgid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=2)
    return GroupStop(sigkilled=sigkilled, stragglers=kill_stragglers(family))
