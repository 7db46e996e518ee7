"""deploy/healthcheck.py, run as Docker runs it: a persistently unhealthy service gets stopped.

Plain compose never restarts an `unhealthy` container; the check stops PID 1 after N failures in a
row so that `restart: unless-stopped` does. Here the "PID 1" is a child process of the test.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

SCRIPT = Path(__file__).resolve().parents[3] / "deploy" / "healthcheck.py"


class Health:
    status = 200


@pytest.fixture
def health_url() -> Iterator[tuple[str, type[Health]]]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(Health.status)
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args: object) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    Health.status = 200
    yield f"http://127.0.0.1:{server.server_address[1]}/healthz", Health
    server.shutdown()
    server.server_close()


def check(url: str, state: Path, pid: int, restart_after: int = 3) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), url, "--restart-after", str(restart_after), "--state", str(state),
         "--pid", str(pid), "--timeout", "2"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip


# A stand-in service that SIGTERM stops. The default action is set explicitly: an ignored signal is
# inherited across exec, and the test process may ignore SIGTERM (started in the background by a
# non-interactive shell, SIGINT is ignored, and Dagster's in-process runs map SIGTERM to SIGINT's
# handler).
SERVICE = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_DFL); time.sleep(120)"


def test_stops_the_service_after_n_failures_in_a_row(
    health_url: tuple[str, type[Health]], tmp_path: Path
) -> None:
    url, health = health_url
    state = tmp_path / "failures"
    service = subprocess.Popen([sys.executable, "-c", SERVICE])
    try:
        assert check(url, state, service.pid).returncode == 0
        health.status = 503
        assert check(url, state, service.pid).returncode == 1
        assert check(url, state, service.pid).returncode == 1
        health.status = 200  # recovered: the count starts over
        assert check(url, state, service.pid).returncode == 0 and not state.exists()
        health.status = 503
        for _ in range(2):
            assert check(url, state, service.pid).returncode == 1
        assert service.poll() is None  # 2 failures in a row: still running
        last = check(url, state, service.pid)
        assert last.returncode == 1 and "stopping PID" in last.stderr
        assert service.wait(timeout=10) == -15  # SIGTERM: the service shuts down cleanly
        assert not state.exists()  # the restarted container starts counting from zero
    finally:
        service.kill()
        service.wait()


def test_an_unreachable_endpoint_counts_as_a_failure(tmp_path: Path) -> None:
    service = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        result = check("http://127.0.0.1:9/healthz", tmp_path / "failures", service.pid, restart_after=0)
        assert result.returncode == 1 and "never" in result.stderr  # 0: report only, never stop
        assert service.poll() is None
    finally:
        service.kill()
        service.wait()
