"""The one pid-liveness check, on real processes: running, exited, zombie, reused pid.

Not tested here: `psutil.AccessDenied` (reported alive). These tests run as root, and on Linux
the fields read (/proc/<pid>/stat) are world-readable unless /proc is mounted with ``hidepid``,
so no process denies us without a mock; the contract is stated in the module docstring.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import psutil
import pytest

from mw_core.adapters.processes import create_time, pid_alive

pytestmark = pytest.mark.unit


def test_running_process_is_alive_with_and_without_identity() -> None:
    me = os.getpid()
    created = create_time(me)
    assert created is not None
    assert pid_alive(me)
    assert pid_alive(me, created)
    assert pid_alive(me, created_by=time.time())


def test_reused_pid_is_not_alive() -> None:
    me = os.getpid()
    created = psutil.Process(me).create_time()
    assert not pid_alive(me, created - 3600)  # recorded for an older process with this pid
    assert not pid_alive(me, created_by=created - 3600)  # this one was created too late


def test_exited_and_zombie_processes_are_not_alive() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 10
    while psutil.Process(proc.pid).status() != psutil.STATUS_ZOMBIE and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not pid_alive(proc.pid)  # exited, not reaped yet: a zombie
    proc.wait()
    assert not pid_alive(proc.pid)
    assert create_time(proc.pid) is None
