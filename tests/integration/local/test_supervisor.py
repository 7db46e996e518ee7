"""Supervisor on real child processes: order, health gating, restarts, reverse stop, no orphans,
status.json, second-instance detection and `down` from another process."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from typer.testing import CliRunner

from mw_core.cli.app import app
from mw_core.local.down import down
from mw_core.local.ports import free_port, port_open
from mw_core.local.specs import ComponentSpec
from mw_core.local.state_files import PID_FILE, AlreadyRunning, StackLock, read_status, running_supervisor
from mw_core.local.supervisor import StartupError, Supervisor

pytestmark = pytest.mark.integration

CHILD = textwrap.dedent(
    """
    import os, signal, socket, subprocess, sys, time
    name, events = sys.argv[1], sys.argv[2]
    opts = dict(a.split("=", 1) for a in sys.argv[3:])

    def note(what):
        with open(events, "a") as fh:
            fh.write(f"{what} {name} {os.getpid()}\\n")

    need = opts.get("require")
    if need:  # started too early? then the supervisor did not wait for the health check
        try:
            socket.create_connection(("127.0.0.1", int(need)), timeout=0.5).close()
        except OSError:
            note("too-early")
            sys.exit(3)
    if opts.get("term") == "ignore":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    else:
        def on_term(*_):
            time.sleep(float(opts.get("grace", "0.1")))  # "flush / commit"
            note("stop")
            sys.exit(0)
        signal.signal(signal.SIGTERM, on_term)
    kids = []
    if "grandchild" in opts:
        kids.append(subprocess.Popen(["sleep", "300"]).pid)
    if "escapee" in opts:
        kids.append(subprocess.Popen(["sleep", "300"], start_new_session=True).pid)
    if kids:
        with open(opts["kids"], "a") as fh:
            fh.write("".join(f"{k}\\n" for k in kids))
    if "port" in opts:
        time.sleep(float(opts.get("delay", "0")))
        srv = socket.socket()
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind(("127.0.0.1", int(opts["port"])))
        srv.listen()
    note("start")
    while True:
        time.sleep(0.05)
    """
)

SUPERVISOR_MAIN = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from mw_core.local.specs import ComponentSpec
    from mw_core.local.state_files import StackLock
    from mw_core.local.supervisor import Supervisor

    state, child, events = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
    with StackLock.acquire(state, argv=sys.argv):
        specs = [
            ComponentSpec("alpha", [sys.executable, child, "alpha", events], min_uptime=0.1),
            ComponentSpec("beta", [sys.executable, child, "beta", events, "grandchild=1",
                                   "kids=" + str(state / "kids")], min_uptime=0.1),
        ]
        sup = Supervisor(specs, state_dir=state, meta={"dagster_url": "http://127.0.0.1:1"})
        sup.install_signal_handlers()
        sup.run()
    """
)


@pytest.fixture
def child(tmp_path: Path) -> Path:
    path = tmp_path / "child.py"
    path.write_text(CHILD)
    return path


@pytest.fixture
def events(tmp_path: Path) -> Path:
    return tmp_path / "events.txt"


@pytest.fixture
def state(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.fixture
def make_sup(state: Path) -> Iterator[Callable[..., Supervisor]]:
    made: list[Supervisor] = []

    def factory(specs: list[Any], **kw: Any) -> Supervisor:
        kw.setdefault("backoff_base", 0.2)
        sup = Supervisor(specs, state_dir=state, **kw)
        made.append(sup)
        return sup

    yield factory
    for sup in made:
        sup.stop()


def spec(child: Path, name: str, events: Path, *opts: str, **kw: Any) -> ComponentSpec:
    kw.setdefault("min_uptime", 0.1)
    return ComponentSpec(name, [sys.executable, str(child), name, str(events), *opts], **kw)


def read_events(events: Path) -> list[tuple[str, str]]:
    if not events.exists():
        return []
    return [tuple(line.split()[:2]) for line in events.read_text().splitlines()]  # type: ignore[misc]


def wait_for(cond: Callable[[], Any], timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_ordered_start_health_gating_reverse_stop_no_orphans(
    child: Path, events: Path, state: Path, tmp_path: Path, make_sup: Callable[..., Supervisor]
) -> None:
    web_port, b_port = free_port(), free_port()
    kids = tmp_path / "kids"
    specs = [
        ComponentSpec(
            "web",
            [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(web_port)],
            cwd=tmp_path,
            health=f"http://127.0.0.1:{web_port}/",
            address=f"http://127.0.0.1:{web_port}",
        ),
        # b listens only after 0.5 s: c must not start before b's port health check passes.
        spec(
            child,
            "b",
            events,
            f"require={web_port}",
            f"port={b_port}",
            "delay=0.5",
            "grandchild=1",
            "escapee=1",
            f"kids={kids}",
            health=("127.0.0.1", b_port),
        ),
        spec(child, "c", events, f"require={b_port}", "grace=0.3", health=lambda: True),
    ]
    sup = make_sup(specs)
    assert sup.start()
    wait_for(lambda: len(read_events(events)) >= 2)
    assert read_events(events) == [("start", "b"), ("start", "c")]  # nobody started too early

    status = json.loads((state / "status.json").read_text())
    comps = {c["component"]: c for c in status["components"]}
    assert [c["component"] for c in status["components"]] == ["web", "b", "c"]
    for name in ("web", "b", "c"):
        assert comps[name]["state"] == "running"
        assert psutil.pid_exists(comps[name]["pid"])
        assert comps[name]["restarts"] == 0
        assert comps[name]["started_at"]
        # own process group and session: a terminal's Ctrl-C never reaches the children
        assert os.getpgid(comps[name]["pid"]) == comps[name]["pid"]
        assert os.getsid(comps[name]["pid"]) == comps[name]["pid"]
    assert comps["web"]["address"] == f"http://127.0.0.1:{web_port}"
    assert (state / "logs" / "web.log").exists()

    pids = [comps[n]["pid"] for n in ("web", "b", "c")]
    kid_pids = [int(p) for p in kids.read_text().split()]
    assert len(kid_pids) == 2
    t0 = time.monotonic()
    sup.stop()
    elapsed = time.monotonic() - t0
    assert elapsed < 15
    # reverse order, each after its graceful SIGTERM handler ran
    assert [e for e in read_events(events) if e[0] == "stop"] == [("stop", "c"), ("stop", "b")]
    assert all(gone(p) for p in pids + kid_pids), "orphan processes left behind"
    assert not port_open("127.0.0.1", web_port)
    assert not port_open("127.0.0.1", b_port)
    final = {c["component"]: c for c in json.loads((state / "status.json").read_text())["components"]}
    assert {c["state"] for c in final.values()} == {"stopped"}


def test_restart_with_backoff_counts_restarts(
    child: Path, events: Path, make_sup: Callable[..., Supervisor]
) -> None:
    sup = make_sup([spec(child, "worker", events)], backoff_base=0.2)
    assert sup.start()
    first = sup.component("worker")["pid"]
    os.kill(first, signal.SIGKILL)

    def restarted(previous: int) -> dict[str, Any] | None:
        sup.poll()
        comp = sup.component("worker")
        return comp if comp["state"] == "running" and comp["pid"] not in (None, previous) else None

    t0 = time.monotonic()
    comp = wait_for(lambda: restarted(first))
    first_gap = time.monotonic() - t0
    assert comp["restarts"] == 1
    second = comp["pid"]
    os.kill(second, signal.SIGKILL)
    t1 = time.monotonic()
    comp = wait_for(lambda: restarted(second))
    second_gap = time.monotonic() - t1
    assert comp["restarts"] == 2
    assert second_gap > first_gap  # 0.2 s then 0.4 s backoff
    assert second_gap >= 0.4
    texts = [e["event"] for e in sup.events if e["component"] == "worker"]
    assert any("restart in 0.2s" in t for t in texts)
    assert any("restart in 0.4s" in t for t in texts)
    status = read_status(sup.state_dir)
    assert status is not None
    assert status["components"][0]["restarts"] == 2


def test_no_restart_component_is_marked_failed(
    child: Path, events: Path, make_sup: Callable[..., Supervisor]
) -> None:
    sup = make_sup([spec(child, "once", events, restart=False)])
    assert sup.start()
    os.kill(sup.component("once")["pid"], signal.SIGTERM)
    wait_for(lambda: (sup.poll(), sup.component("once")["state"] == "failed")[1])
    assert sup.component("once")["restarts"] == 0


def test_startup_failure_stops_what_started(
    child: Path, events: Path, make_sup: Callable[..., Supervisor]
) -> None:
    port = free_port()
    sup = make_sup(
        [
            spec(child, "ok", events),
            spec(child, "bad", events, f"require={port}"),  # nothing listens there: exits 3
            spec(child, "never", events),
        ]
    )
    with pytest.raises(StartupError) as info:
        sup.start()
    assert info.value.component == "bad"
    assert "code 3" in info.value.reason
    assert "supervisor: starting bad" in info.value.log_tail
    ok = sup.component("ok")
    assert ok["state"] == "stopped"
    assert ("start", "never") not in read_events(events)


def test_sigterm_ignoring_child_is_killed_within_budget(
    child: Path, events: Path, make_sup: Callable[..., Supervisor]
) -> None:
    specs = [spec(child, f"stubborn{i}", events, "term=ignore", stop_timeout=30) for i in range(3)]
    sup = make_sup(specs, stop_timeout=2.0)
    assert sup.start()
    pids = [sup.component(f"stubborn{i}")["pid"] for i in range(3)]
    t0 = time.monotonic()
    sup.stop()
    assert time.monotonic() - t0 < 3.0
    assert all(gone(p) for p in pids)
    assert any("SIGKILL" in e["event"] for e in sup.events)


@pytest.fixture
def running_stack(
    tmp_path: Path, child: Path, events: Path, state: Path
) -> Iterator[subprocess.Popen[bytes]]:
    main = tmp_path / "sup_main.py"
    main.write_text(SUPERVISOR_MAIN)
    proc = subprocess.Popen(
        [sys.executable, str(main), str(state), str(child), str(events)],
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=open(tmp_path / "sup.err", "wb"),  # noqa: SIM115 - closed with the process
    )

    def ready() -> bool:
        st = read_status(state)
        return bool(st and st["meta"].get("ready") and st["supervisor"]["pid"] == proc.pid)

    try:
        wait_for(ready, timeout=15)
    except AssertionError:
        proc.kill()
        raise AssertionError((tmp_path / "sup.err").read_text()) from None
    yield proc
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    down(state, timeout=5)


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """The CLI configures the root logger onto CliRunner's streams; put pytest's handlers back."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.usefixtures("restore_logging")
def test_second_instance_detected_and_down_from_another_process(
    running_stack: subprocess.Popen[bytes], state: Path, events: Path
) -> None:
    pid = running_stack.pid
    assert running_supervisor(state) == pid
    with pytest.raises(AlreadyRunning) as info:
        StackLock.acquire(state)
    assert info.value.pid == pid

    env = {"MW_STATE_DIR": str(state), "MW_LOG_LEVEL": "WARNING"}
    runner = CliRunner()
    result = runner.invoke(app, ["up", "--no-live"], env=env)
    assert result.exit_code == 1
    assert "already running" in result.output
    assert str(pid) in result.output

    result = runner.invoke(app, ["status", "--json"], env=env)
    assert result.exit_code == 0, result.output
    st = json.loads(result.stdout)
    assert st["running"] is True
    assert [c["component"] for c in st["components"]] == ["alpha", "beta"]
    children = [c["pid"] for c in st["components"]]
    grandkids = [int(p) for p in (state / "kids").read_text().split()]

    result = runner.invoke(app, ["logs", "beta", "-n", "5"], env=env)
    assert result.exit_code == 0
    assert "supervisor: starting beta" in result.stdout

    t0 = time.monotonic()
    result = down(state, timeout=15)
    assert result.was_running and result.stopped
    assert result.supervisor_pid == pid
    assert time.monotonic() - t0 < 15
    running_stack.wait(timeout=5)
    assert running_stack.returncode == 0
    assert all(gone(p) for p in children + grandkids)
    assert [e for e in read_events(events) if e[0] == "stop"] == [("stop", "beta"), ("stop", "alpha")]
    assert not (state / PID_FILE).exists()
    st_after = read_status(state)
    assert st_after is not None
    assert st_after["running"] is False
    assert {c["state"] for c in st_after["components"]} == {"stopped"}

    result = runner.invoke(app, ["status"], env=env)
    assert result.exit_code == 1
    result = runner.invoke(app, ["down"], env=env)
    assert result.exit_code == 0
    assert "no Market Watch stack running" in result.output


def test_down_cleans_up_after_a_killed_supervisor(
    running_stack: subprocess.Popen[bytes], state: Path
) -> None:
    st = read_status(state)
    assert st is not None
    children = [c["pid"] for c in st["components"]]
    grandkids = [int(p) for p in (state / "kids").read_text().split()]
    running_stack.kill()  # no chance to stop its children: they live in their own sessions
    running_stack.wait()
    assert not any(gone(p) for p in children)
    st = read_status(state)
    assert st is not None
    assert st["running"] is False
    assert {c["state"] for c in st["components"]} == {"stale"}
    assert running_supervisor(state) is None

    result = down(state, timeout=5)
    assert not result.was_running
    assert sorted(result.cleaned) == ["alpha", "beta"]
    assert all(gone(p) for p in children + grandkids)
    assert not (state / PID_FILE).exists()
    # the state dir is usable again
    StackLock.acquire(state).release()


def test_port_reusable_after_stop(child: Path, events: Path, make_sup: Callable[..., Supervisor]) -> None:
    port = free_port()
    sup = make_sup([spec(child, "srv", events, f"port={port}", health=("127.0.0.1", port))])
    assert sup.start()
    sup.stop()
    with socket.socket() as s:  # no stale listener: the port can be bound again right away
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))


def test_watcher_pauses_stops_and_starts_components_and_sets_status_fields(
    child: Path, events: Path, make_sup: Callable[..., Supervisor]
) -> None:
    """The control a watcher (the broker rollover) uses, run from `run()`: pause / resume a group, a
    planned stop and start that is not counted as a restart, extra fields in status.json."""
    sup = make_sup([spec(child, "producer", events), spec(child, "consumer", events)])
    paused: list[int] = []

    def scenario() -> None:
        if paused:
            return
        pid = sup.signal_component("producer", signal.SIGSTOP)
        assert pid is not None
        paused.append(pid)
        wait_for(lambda: psutil.Process(pid).status() == psutil.STATUS_STOPPED)
        sup.signal_component("producer", signal.SIGCONT)
        wait_for(lambda: psutil.Process(pid).status() != psutil.STATUS_STOPPED)

        first = sup.component("consumer")["pid"]
        sup.stop_component("consumer")
        assert sup.component("consumer")["state"] == "stopped"
        assert gone(first)
        sup.poll()  # a planned stop is not a death: no restart is scheduled
        assert sup.component("consumer")["state"] == "stopped"
        sup.start_component("consumer")

        def consumer_running() -> bool:
            sup.poll()
            return bool(sup.component("consumer")["state"] == "running")

        wait_for(consumer_running)
        assert sup.component("consumer")["pid"] not in (None, first)
        assert sup.component("consumer")["restarts"] == 0

        sup.set_fields("producer", rss_mb=12.5, rollovers=1)
        status = read_status(sup.state_dir)
        assert status is not None
        assert status["components"][0]["rss_mb"] == 12.5
        assert status["components"][0]["rollovers"] == 1
        sup.signal_component("producer", signal.SIGSTOP)  # stop() must still end a paused group
        sup.request_stop()

    sup.add_watcher(scenario)
    sup.run()
    assert paused
    assert gone(paused[0])
    assert ("stop", "producer") in read_events(events)  # it handled the SIGTERM (SIGCONT after it)
