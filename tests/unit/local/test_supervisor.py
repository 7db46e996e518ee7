"""Supervisor building blocks: backoff, health checks, lock/pid file, status file, step ordering."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from mw_core.adapters.retry import exponential_delay
from mw_core.local.down import cleanup_stale
from mw_core.local.probes import check_health
from mw_core.local.specs import ComponentSpec, StepSpec
from mw_core.local.state_files import (
    PID_FILE,
    STATUS_FILE,
    AlreadyRunning,
    StackLock,
    read_status,
    running_supervisor,
    tail,
)
from mw_core.local.supervisor import StartupError, Supervisor

pytestmark = pytest.mark.unit


def dead_pid() -> tuple[int, float]:
    """Pid and creation time of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    create_time = psutil.Process(proc.pid).create_time()
    proc.wait()
    return proc.pid, create_time


def test_backoff_doubles_and_caps() -> None:
    """The supervisor's restart delays (`exponential_delay`, shown as "restart in 0.5s")."""
    assert [exponential_delay(n, base_s=0.5, cap_s=4) for n in range(1, 7)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert exponential_delay(0, base_s=1.0, cap_s=30) == 1.0


def test_health_check_kinds() -> None:
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        port = srv.getsockname()[1]
        assert check_health(("127.0.0.1", port))
    assert not check_health(("127.0.0.1", port))  # closed now
    assert check_health(None)
    assert check_health(lambda: True)
    assert not check_health(lambda: False)
    assert not check_health(lambda: 1 / 0 > 0)  # raising counts as unhealthy
    assert not check_health(f"http://127.0.0.1:{port}/healthz")
    assert not check_health("not-a-url")


def test_duplicate_names_rejected(tmp_path: Path) -> None:
    specs = [ComponentSpec("a", ["true"]), ComponentSpec("a", ["true"])]
    with pytest.raises(ValueError, match="duplicate"):
        Supervisor(specs, state_dir=tmp_path)


def test_steps_run_in_order_and_status_file(tmp_path: Path) -> None:
    order: list[str] = []
    specs = [
        StepSpec("first", lambda: order.append("first") or "did first", address="addr-1"),
        StepSpec("second", lambda: order.append("second") or None, done_state="external"),
    ]
    sup = Supervisor(specs, state_dir=tmp_path, meta=lambda: {"dagster_url": "http://x"})
    assert sup.start()
    sup.stop()
    assert order == ["first", "second"]
    status = json.loads((tmp_path / STATUS_FILE).read_text())
    comps = {c["component"]: c for c in status["components"]}
    assert comps["first"]["state"] == "done"
    assert comps["first"]["detail"] == "did first"
    assert comps["first"]["address"] == "addr-1"
    assert comps["second"]["state"] == "external"
    assert status["meta"]["dagster_url"] == "http://x"
    assert status["supervisor"]["pid"] > 0


def test_failing_step_raises_startup_error_and_skips_the_rest(tmp_path: Path) -> None:
    ran: list[str] = []

    def boom() -> str:
        raise RuntimeError("database unreachable")

    specs = [StepSpec("db", boom), StepSpec("after", lambda: ran.append("after") or "")]
    sup = Supervisor(specs, state_dir=tmp_path)
    with pytest.raises(StartupError, match="database unreachable") as info:
        sup.start()
    assert info.value.component == "db"
    assert ran == []
    assert sup.component("db")["state"] == "failed"


def test_lock_excludes_second_owner_and_is_released(tmp_path: Path) -> None:
    lock = StackLock.acquire(tmp_path, argv=["mw", "up"])
    info = json.loads((tmp_path / PID_FILE).read_text())
    assert info["pid"] == psutil.Process().pid
    assert info["argv"] == ["mw", "up"]
    # flock is per open file description: a second open in this same process conflicts too.
    with pytest.raises(AlreadyRunning) as exc:
        StackLock.acquire(tmp_path)
    assert exc.value.pid == info["pid"]
    assert running_supervisor(tmp_path) == info["pid"]
    lock.release()
    assert not (tmp_path / PID_FILE).exists()
    assert running_supervisor(tmp_path) is None
    StackLock.acquire(tmp_path).release()


def test_stale_pid_file_is_replaced(tmp_path: Path) -> None:
    pid, create_time = dead_pid()
    (tmp_path / PID_FILE).write_text(json.dumps({"pid": pid, "create_time": create_time}))
    assert running_supervisor(tmp_path) is None
    with StackLock.acquire(tmp_path):
        assert json.loads((tmp_path / PID_FILE).read_text())["pid"] == psutil.Process().pid


def test_read_status_marks_dead_supervisor(tmp_path: Path) -> None:
    pid, create_time = dead_pid()
    status = {
        "supervisor": {"pid": pid, "create_time": create_time},
        "components": [
            {"component": "gone-one", "state": "running", "pid": pid, "create_time": create_time},
            {"component": "schema", "state": "done", "pid": None},
        ],
    }
    (tmp_path / STATUS_FILE).write_text(json.dumps(status))
    st = read_status(tmp_path)
    assert st is not None
    assert st["running"] is False
    assert [c["state"] for c in st["components"]] == ["gone", "done"]
    assert cleanup_stale(tmp_path) == []  # nothing alive to clean


def test_tail(tmp_path: Path) -> None:
    path = tmp_path / "x.log"
    path.write_text("".join(f"line {i}\n" for i in range(100)))
    assert tail(path, 3) == "line 97\nline 98\nline 99"
    assert tail(tmp_path / "missing.log") == ""
