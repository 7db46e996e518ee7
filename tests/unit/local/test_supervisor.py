"""Supervisor building blocks: backoff, health checks, lock/pid file, status file, step ordering."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from mw_core.local.supervisor import (
    PID_FILE,
    STATUS_FILE,
    AlreadyRunning,
    ComponentSpec,
    ManagedSpec,
    StackLock,
    StartupError,
    StepSpec,
    Supervisor,
    backoff_delay,
    check_health,
    cleanup_stale,
    read_status,
    running_supervisor,
    tail,
)

pytestmark = pytest.mark.unit


def dead_pid() -> tuple[int, float]:
    """Pid and creation time of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    create_time = psutil.Process(proc.pid).create_time()
    proc.wait()
    return proc.pid, create_time


def test_backoff_doubles_and_caps() -> None:
    assert [backoff_delay(n, base=0.5, cap=4) for n in range(1, 7)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert backoff_delay(0, base=1.0) == 1.0


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


def test_render_status_shows_components_and_urls() -> None:
    from rich.console import Console

    from mw_core.cli.stack import render_status

    status = {
        "running": True,
        "meta": {
            "dagster_url": "http://127.0.0.1:3000",
            "database_url": "postgresql://u:***@db/marketwatch",
            "kafka_bootstrap": "127.0.0.1:9092",
            "startup_s": 9.5,
        },
        "components": [
            {"component": "postgres", "state": "running", "address": "db", "pid": 42, "restarts": 1},
        ],
        "events": [{"ts": "t", "component": "postgres", "event": "restart #1"}],
    }
    console = Console(record=True, width=200)
    console.print(render_status(status, banners=["price source x: OK"]))
    text = console.export_text()
    for needle in ("postgres", "running", "42", "http://127.0.0.1:3000", "u:***@db", "9.5s", "restart #1"):
        assert needle in text


# --- the concrete stack (specs only; nothing is started) ------------------------------------------


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("MW_") or key == "DAGSTER_PG_URL":
            monkeypatch.delenv(key)


def test_stack_order_and_wiring_embedded(tmp_path: Path, clean_env: None) -> None:
    from mw_core.config import load_settings
    from mw_core.local.stack import Stack, StackOptions

    settings = load_settings(_env_file=None, state_dir=tmp_path / "state")
    stack = Stack(settings, StackOptions(replay=("a.csv",), speed="60", loop=True, dagster_port=3999))
    specs = stack.specs()
    assert [s.name for s in specs] == [
        "postgres",
        "kafka",
        "schema",
        "dagster-webserver",
        "dagster-daemon",
        "replay",
        "ingest",
        "process",
    ]
    by_name = {s.name: s for s in specs}
    assert isinstance(by_name["postgres"], ManagedSpec)
    assert isinstance(by_name["schema"], StepSpec)

    web = by_name["dagster-webserver"]
    assert isinstance(web, ComponentSpec)
    assert "dagster dev" not in " ".join(web.argv)  # ignores SIGTERM from non-interactive shells
    assert web.argv[0].endswith("dagster-webserver") or "dagster_webserver" in web.argv
    assert list(web.argv[1:5]) == ["-h", "127.0.0.1", "-p", "3999"]
    assert callable(web.health)  # GraphQL: every code location LOADED (server_info answers earlier)
    assert web.health() is False  # nothing listens on :3999
    daemon = by_name["dagster-daemon"]
    assert isinstance(daemon, ComponentSpec)
    assert "run" in daemon.argv
    replay = by_name["replay"]
    assert isinstance(replay, ComponentSpec)
    assert {"replay-server", "a.csv", "--loop", "60"} <= set(replay.argv)

    # values resolved while starting reach the children through MW_* variables
    stack.app_db_url = "postgresql://postgres@127.0.0.1:5555/marketwatch"
    stack.dagster_pg_url = "postgresql+psycopg2://postgres@127.0.0.1:5555/dagster"
    stack.kafka_bootstrap = "127.0.0.1:9999"
    (tmp_path / "state").mkdir()
    stack.replay_ready.write_text(
        json.dumps({"ws_url": "ws://127.0.0.1:7", "rest_url": "http://127.0.0.1:7"})
    )
    ingest_env = stack.ingest_env()
    assert ingest_env["MW_DATABASE_URL"] == stack.app_db_url
    assert ingest_env["MW_KAFKA_BOOTSTRAP"] == "127.0.0.1:9999"
    assert ingest_env["MW_BINANCE_WS_URL"] == "ws://127.0.0.1:7"
    assert ingest_env["MW_BINANCE_REST_URL"] == "http://127.0.0.1:7"
    assert ingest_env["MW_METRICS_PORT"] == str(stack.ingest_port)
    denv = stack.dagster_env()
    assert denv["DAGSTER_HOME"] == str(tmp_path / "state" / "dagster")
    assert denv["DAGSTER_PG_URL"].startswith("postgresql+psycopg2://")
    assert stack.meta()["dagster_url"] == "http://127.0.0.1:3999"


def test_stack_external_servers_and_no_passwords_in_status(tmp_path: Path, clean_env: None) -> None:
    from mw_core.config import load_settings
    from mw_core.local.stack import Stack

    settings = load_settings(
        _env_file=None,
        state_dir=tmp_path,
        database_url="postgresql://app:s3cret@db.example:5432/marketwatch",
        kafka_bootstrap="kafka.example:9093",
    )
    stack = Stack(settings)
    specs = stack.specs()
    assert [s.name for s in specs][:3] == ["postgres", "kafka", "schema"]
    assert all(isinstance(s, StepSpec) for s in specs[:3])
    assert "replay" not in [s.name for s in specs]
    assert "s3cret" not in json.dumps(stack.meta())
    assert stack.meta()["database_url"] == "postgresql://app:***@db.example:5432/marketwatch"
    assert stack.service_env()["MW_DATABASE_URL"].endswith(":s3cret@db.example:5432/marketwatch")


def test_url_helpers() -> None:
    from mw_core.local.stack import database_name, durable, libpq_url, sqlalchemy_url, with_database

    url = "postgresql://u:p@h:5432/marketwatch?sslmode=require"
    assert with_database(url, "dagster") == "postgresql://u:p@h:5432/dagster?sslmode=require"
    assert sqlalchemy_url(url).startswith("postgresql+psycopg2://u:p@h")
    assert libpq_url(sqlalchemy_url(url)) == url
    assert database_name(url) == "marketwatch"
    assert durable(b'{"status": "ok", "stored": 3, "last_commit_age_s": 0.2}')
    assert not durable(b'{"status": "ok", "stored": 0, "last_commit_age_s": null}')
    assert not durable(b"not json")
