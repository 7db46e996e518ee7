"""Is a process still the one we mean? The one pid-liveness check of Market Watch.

Contract:
- `pid_alive(pid, ...)` is True while `pid` runs and is not a zombie, and (when an identity is
  given) was created at ``create_time`` (within one second) or no later than ``created_by``. A pid
  whose creation time does not fit has been reused by another process: not alive.
- A process we may not inspect (`psutil.AccessDenied`) EXISTS: it is reported alive. Declaring it
  dead would let the caller reclaim what it owns (a state dir's lock, a Dagster run) while it
  still runs.
- Used by the local supervisor (`mw up` / `mw down`) and by the Dagster sensors
  (`orphaned_runs_sensor`); it only reads process tables, it never signals.
"""

from __future__ import annotations

import psutil

__all__ = ["create_time", "pid_alive"]

#: Tolerance when comparing a recorded creation time with the process's own.
CREATE_TIME_TOLERANCE_S = 1.0


def pid_alive(pid: int, create_time: float | None = None, *, created_by: float | None = None) -> bool:
    """True when `pid` runs and is the process we mean (see the module docstring).

    Args:
        pid: Process id.
        create_time: The process's recorded creation time (epoch seconds), when known exactly.
        created_by: The latest plausible creation time (epoch seconds), e.g. when a run started.
    """
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        created = proc.create_time()
    except psutil.NoSuchProcess:  # includes ZombieProcess
        return False
    except psutil.AccessDenied:
        return True  # it exists; not ours to declare dead
    if create_time is not None and abs(created - create_time) >= CREATE_TIME_TOLERANCE_S:
        return False
    return created_by is None or created <= created_by


def create_time(pid: int) -> float | None:
    """Creation time of `pid` (epoch seconds), or None when it cannot be read."""
    try:
        return float(psutil.Process(pid).create_time())
    except psutil.Error:
        return None
