"""Logging, Prometheus metrics and the `/healthz` endpoint shared by the long-lived services.

Contract:
- `configure_logging(settings)` routes both structlog and stdlib `logging` through one renderer
  (console or JSON). Secrets never reach it: log `Settings.safe_dict()`, never `Settings`.
- `MetricsServer(host, port, health)` serves ``/metrics`` (Prometheus text format) and ``/healthz``
  (JSON from `health()`; HTTP 200 when ``status == "ok"``, else 503) from a daemon thread, bound to
  127.0.0.1 by default.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson
import structlog
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from mw_core.config import Settings

HealthFn = Callable[[], dict[str, Any]]


def configure_logging(
    settings: Settings | None = None, *, level: str | None = None, fmt: str | None = None
) -> None:
    """Configure structlog + stdlib logging once per process."""
    level = level or (settings.log_level if settings else "INFO")
    fmt = fmt or (settings.log_format if settings else "console")
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("aiokafka", "kafka", "websockets", "httpx", "httpcore", "asyncio"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    return structlog.stdlib.get_logger(name)  # type: ignore[no-any-return]


class _Handler(BaseHTTPRequestHandler):
    health: HealthFn

    def do_GET(self) -> None:
        if self.path.startswith("/metrics"):
            body = generate_latest()
            self._send(200, body, CONTENT_TYPE_LATEST)
        elif self.path.startswith("/healthz"):
            try:
                state = type(self).health()
            except Exception as exc:  # health must answer even when the service is broken
                state = {"status": "error", "error": repr(exc)}
            code = 200 if state.get("status") == "ok" else 503
            self._send(code, orjson.dumps(state, default=str), "application/json")
        else:
            self._send(404, b"not found\n", "text/plain")

    def _send(self, code: int, body: bytes, ctype: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        return


class MetricsServer:
    """`/metrics` + `/healthz` on a background thread."""

    def __init__(self, health: HealthFn, *, host: str = "127.0.0.1", port: int = 0) -> None:
        handler = type("HealthHandler", (_Handler,), {"health": staticmethod(health)})
        self._server = ThreadingHTTPServer((host, port), handler)
        self._server.daemon_threads = True
        self.host = host
        self.port = int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> MetricsServer:
        """Serve on a daemon thread (the port is already bound: `url` is valid before this)."""
        threading.Thread(target=self._server.serve_forever, name="metrics", daemon=True).start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
