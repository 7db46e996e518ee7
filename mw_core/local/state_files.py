"""The files a stack keeps in its state dir, and who owns the dir.

Contract:
- ``state_dir/supervisor.pid`` (`PID_FILE`) holds the owning supervisor's pid, creation time,
  start time and argv as JSON, under an exclusive `flock` (`StackLock`). A second supervisor on
  the same state dir gets `AlreadyRunning` naming the live pid; a stale file (dead pid) is replaced.
- ``state_dir/status.json`` (`STATUS_FILE`) holds each component's state, address, pid, restart
  count and start time; the supervisor writes it atomically on every change (`write_json_atomic`)
  and holds no password in it. `read_status` adds whether its supervisor still runs.
- ``state_dir/logs/<component>.log`` (`LOG_DIR`): one log per component; `tail` reads its end.
- A pid counts as running only when its creation time matches the recorded one (no reused pid):
  `mw_core.adapters.processes.pid_alive`.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import threading
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mw_core.adapters.processes import create_time, pid_alive

log = logging.getLogger(__name__)

STATUS_FILE = "status.json"
PID_FILE = "supervisor.pid"
LOG_DIR = "logs"


class AlreadyRunning(RuntimeError):
    """Another supervisor holds the lock on this state dir."""

    def __init__(self, pid: int, info: Mapping[str, Any]) -> None:
        self.pid = pid
        self.info = dict(info)
        super().__init__(f"a stack is already running on this state dir (supervisor pid {pid})")


def now_iso() -> str:
    """Now, UTC, to the second, as ISO 8601 (the time stamps of status.json)."""
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


def write_json_atomic(path: Path, data: Mapping[str, Any]) -> None:
    """Write `data` as JSON to `path` so that a reader sees the old or the new file, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object from `path`, or None when missing, unreadable or not an object."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


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
                "create_time": create_time(os.getpid()),
                "started_at": now_iso(),
                **info,
            }
            _write_fd_json(fd, data)
            self._fd = fd
            return
        raise RuntimeError(f"could not lock {self.path}")

    def update(self, **info: Any) -> None:
        """Merge `info` into the pid file (e.g. the Dagster URL once known)."""
        if self._fd is None:
            return
        _write_fd_json(self._fd, {**(_read_fd_json(self._fd) or {}), **info})

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


def _write_fd_json(fd: int, data: Mapping[str, Any]) -> None:
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(data, default=str) + "\n").encode(), 0)


def read_pid_file(state_dir: Path) -> dict[str, Any] | None:
    """The content of ``supervisor.pid`` (whether or not its owner still runs)."""
    return read_json(Path(state_dir) / PID_FILE)


def running_supervisor(state_dir: Path) -> int | None:
    """Pid of the live supervisor owning `state_dir`, or None (stale files do not count)."""
    info = read_pid_file(state_dir)
    if not info or not isinstance(info.get("pid"), int):
        return None
    return info["pid"] if pid_alive(info["pid"], info.get("create_time")) else None


def supervisor_alive(status: Mapping[str, Any]) -> bool:
    """Whether the supervisor that wrote this status.json content still runs."""
    sup = status.get("supervisor", {})
    return isinstance(sup.get("pid"), int) and pid_alive(sup["pid"], sup.get("create_time"))


def read_status(state_dir: Path) -> dict[str, Any] | None:
    """status.json annotated with ``running`` (is its supervisor alive?) and per-component liveness.

    Components of a dead supervisor are reported with state ``stale`` when their process still
    runs and ``gone`` when not.
    """
    status = read_json(Path(state_dir) / STATUS_FILE)
    if status is None:
        return None
    running = supervisor_alive(status)
    status["running"] = running
    if not running:
        for comp in status.get("components", []):
            pid = comp.get("pid")
            if comp.get("state") in ("stopped", "done", "external", "pending"):
                continue
            alive = isinstance(pid, int) and pid_alive(pid, comp.get("create_time"))
            comp["state"] = "stale" if alive else "gone"
    return status
