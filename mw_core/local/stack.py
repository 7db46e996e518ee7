"""The whole local platform as supervisor specs: what `mw up` runs, in order.

Contract:
- `Stack(settings, ...)` builds, from one `Settings`, the ordered specs for `Supervisor`:

  1. ``postgres``: the embedded PostgreSQL under ``state_dir/pg`` (or the external
     ``MW_DATABASE_URL``, checked), then databases ``marketwatch`` and ``dagster`` created if missing;
  2. ``kafka``: the embedded memory-only broker (or ``MW_KAFKA_BOOTSTRAP``), then the topics
     (re-created after a broker restart, since the embedded broker keeps nothing);
  3. ``schema``: `db.apply_schema`;
  4. ``dagster-webserver`` and ``dagster-daemon``: run directly (never ``dagster dev``, which
     ignores SIGTERM when started from a non-interactive shell), ``DAGSTER_HOME=state_dir/dagster``
     with ``dagster.yaml`` copied there, run/event/schedule storage in the ``dagster`` database;
  5. ``replay`` (only with replay files): ``mw replay-server`` on 127.0.0.1, which writes its URLs to
     ``state_dir/replay.json``;
  6. ``ingest`` (``mw ingest``, pointed at the replay server when replaying) and ``process``
     (``mw process``), each with ``/healthz`` on ``host:<free port>``.

- Children get the resolved URLs through ``MW_*`` variables; status addresses never contain
  passwords. Servers without authentication (embedded PostgreSQL with trust auth, the embedded
  broker) always bind 127.0.0.1; ``host`` applies to the Dagster UI and the metrics endpoints.
- `FirstTickProbe` measures the time from `up` to the first durable price row (the start-up
  target: UI answering + first tick durable < 20 s warm, < 40 s on first start).
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import orjson
from pydantic import SecretStr

from mw_core.config import Settings, redact_url
from mw_core.local.ports import free_port
from mw_core.local.runtime import APP_DATABASE, DAGSTER_DATABASE, create_database
from mw_core.local.supervisor import (
    ComponentSpec,
    ManagedSpec,
    Spec,
    StepSpec,
    http_ok,
    http_status,
    read_json,
    tcp_ok,
)

log = logging.getLogger(__name__)

INFRA_HOST = "127.0.0.1"  # trust-auth PostgreSQL and the auth-less broker never leave loopback
DEFAULT_DAGSTER_PORT = 3000
REPLAY_READY_FILE = "replay.json"
DEFAULT_DAGSTER_YAML = """\
# Written by `mw up` (no dagster.yaml found next to workspace.yaml).
storage:
  postgres:
    postgres_url:
      env: DAGSTER_PG_URL
run_coordinator:
  module: dagster.core.run_coordinator
  class: QueuedRunCoordinator
  config:
    max_concurrent_runs: 4
telemetry:
  enabled: false
"""


def with_database(url: str, database: str) -> str:
    """`url` with its database name replaced (query string kept)."""
    base, _, query = url.partition("?")
    head, _, _ = base.rpartition("/")
    return f"{head}/{database}" + (f"?{query}" if query else "")


def sqlalchemy_url(url: str) -> str:
    """A libpq URL as SQLAlchemy/psycopg2 wants it (``postgresql+psycopg2://``)."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg2://" + url[len(prefix) :]
    return url


def connect_host(host: str) -> str:
    """Where to connect to reach a server bound to `host` (wildcards -> loopback)."""
    return "127.0.0.1" if host in ("0.0.0.0", "", "::") else host  # noqa: S104 - comparison only


def find_workspace(*, cwd: Path | None = None) -> Path | None:
    """``workspace.yaml`` in the working directory, else next to the installed `mw_core` package."""
    import mw_core

    candidates = [
        (cwd or Path.cwd()) / "workspace.yaml",
        Path(mw_core.__file__).resolve().parent.parent / "workspace.yaml",
    ]
    for path in candidates:
        if path.is_file():
            return path.resolve()
    return None


def script(name: str, module: str) -> list[str]:
    """Console script `name` of this interpreter's environment, else ``python -m module``."""
    local = Path(sys.executable).parent / name
    if local.exists():
        return [str(local)]
    found = shutil.which(name)
    return [found] if found else [sys.executable, "-m", module]


def mw_command() -> list[str]:
    local = Path(sys.executable).parent / "mw"
    if local.exists():
        return [str(local)]
    return [sys.executable, "-c", "from mw_core.cli import main; main()"]


def _pick_port(host: str, preferred: int | None) -> int:
    if preferred:
        return preferred
    if not tcp_ok(connect_host(host), DEFAULT_DAGSTER_PORT, timeout=0.2):
        try:
            import socket

            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind((host, DEFAULT_DAGSTER_PORT))
            return DEFAULT_DAGSTER_PORT
        except OSError:
            pass
    return free_port(host)


@dataclass
class StackOptions:
    """What `mw up` was asked for (flags), on top of `Settings`."""

    replay: Sequence[str] = ()
    loop: bool = False
    speed: str = "60"
    host: str | None = None
    dagster_port: int | None = None
    dagster_pg_url: str | None = None  # external Dagster storage (env DAGSTER_PG_URL)
    workspace: Path | None = None
    start_timeout_s: float = 120.0
    extra_env: dict[str, str] = field(default_factory=dict)


class Stack:
    """The concrete platform: specs plus the values resolved while starting. See module docstring."""

    def __init__(self, settings: Settings, options: StackOptions | None = None) -> None:
        self.options = options or StackOptions()
        self.settings = settings
        self.state_dir = settings.state_dir.expanduser().absolute()
        self.host = self.options.host or settings.host
        self.workspace = self.options.workspace or find_workspace()
        self.dagster_home = self.state_dir / "dagster"
        self.dagster_port = _pick_port(self.host, self.options.dagster_port)
        self.ingest_port = free_port(self.host)
        self.process_port = free_port(self.host)
        self.replay_ready = self.state_dir / REPLAY_READY_FILE
        self.started_at = datetime.now(UTC)
        # Resolved while starting (full URLs stay in memory and in children's environment only).
        self.app_db_url: str | None = (
            settings.database_url.get_secret_value() if settings.database_url else None
        )
        self.dagster_pg_url: str | None = self.options.dagster_pg_url
        self.kafka_bootstrap: str | None = settings.kafka_bootstrap
        self.pg: Any = None
        self.broker: Any = None
        self.schema_info: Any = None

    # --- derived ------------------------------------------------------------------------------
    @property
    def dagster_url(self) -> str:
        return f"http://{connect_host(self.host)}:{self.dagster_port}"

    @property
    def replaying(self) -> bool:
        return bool(self.options.replay)

    def resolved_settings(self) -> Settings:
        updates: dict[str, Any] = {"state_dir": self.state_dir}
        if self.app_db_url:
            updates["database_url"] = SecretStr(self.app_db_url)
        if self.kafka_bootstrap:
            updates["kafka_bootstrap"] = self.kafka_bootstrap
        return self.settings.model_copy(update=updates)

    def meta(self) -> dict[str, Any]:
        """Top-level addresses for status.json (no passwords)."""
        return {
            "dagster_url": self.dagster_url,
            "database_url": redact_url(self.app_db_url) if self.app_db_url else None,
            "kafka_bootstrap": self.kafka_bootstrap,
            "host": self.host,
            "state_dir": str(self.state_dir),
            "replay": list(self.options.replay),
            "price_source": self.price_source,
            "rss_feeds": [redact_url(f) for f in self.settings.rss_feeds],
            "workspace": str(self.workspace) if self.workspace else None,
            "ingest_health": f"http://{connect_host(self.host)}:{self.ingest_port}/healthz",
            "process_health": f"http://{connect_host(self.host)}:{self.process_port}/healthz",
        }

    def service_env(self) -> dict[str, str]:
        """Environment every child gets: the resolved infrastructure, state dir, host."""
        env = {
            "MW_STATE_DIR": str(self.state_dir),
            "MW_HOST": self.host,
            **self.options.extra_env,
        }
        if self.app_db_url:
            env["MW_DATABASE_URL"] = self.app_db_url
        if self.kafka_bootstrap:
            env["MW_KAFKA_BOOTSTRAP"] = self.kafka_bootstrap
        return env

    def dagster_env(self) -> dict[str, str]:
        env = {**self.service_env(), "DAGSTER_HOME": str(self.dagster_home)}
        if self.dagster_pg_url:
            env["DAGSTER_PG_URL"] = self.dagster_pg_url
        return env

    def replay_urls(self) -> dict[str, str] | None:
        data = read_json(self.replay_ready)
        if not data or "ws_url" not in data:
            return None
        return {"ws_url": str(data["ws_url"]), "rest_url": str(data.get("rest_url", ""))}

    def ingest_env(self) -> dict[str, str]:
        env = {**self.service_env(), "MW_METRICS_PORT": str(self.ingest_port)}
        urls = self.replay_urls() if self.replaying else None
        if urls:
            env["MW_BINANCE_WS_URL"] = urls["ws_url"]
            if urls["rest_url"]:
                env["MW_BINANCE_REST_URL"] = urls["rest_url"]
        return env

    # --- infrastructure steps -------------------------------------------------------------------
    def _start_embedded_postgres(self) -> str:
        from mw_core.local.postgres import EmbeddedPostgres

        if self.pg is None:
            self.pg = EmbeddedPostgres(self.state_dir / "pg", host=INFRA_HOST)
        server_url = self.pg.start()
        self.app_db_url = with_database(server_url, APP_DATABASE)
        if not self.options.dagster_pg_url:
            self.dagster_pg_url = sqlalchemy_url(with_database(server_url, DAGSTER_DATABASE))
        return redact_url(self.app_db_url)

    def _create_databases(self) -> None:
        if self.pg is None:
            raise RuntimeError("embedded PostgreSQL not started")
        server_url = self.pg.url()

        async def create() -> list[str]:
            made = []
            for name in (APP_DATABASE, DAGSTER_DATABASE):
                if await create_database(server_url, name):
                    made.append(name)
            return made

        made = asyncio.run(create())
        if made:
            log.info("created databases %s", made)

    def _check_external_postgres(self) -> str:
        from mw_core.adapters import db

        if self.app_db_url is None:
            raise RuntimeError("no database URL")
        asyncio.run(db.ping(self.app_db_url))
        if not self.dagster_pg_url:
            try:
                asyncio.run(create_database(with_database(self.app_db_url, "postgres"), DAGSTER_DATABASE))
            except Exception as exc:
                log.warning("could not create database %r on the external server: %s", DAGSTER_DATABASE, exc)
            self.dagster_pg_url = sqlalchemy_url(with_database(self.app_db_url, DAGSTER_DATABASE))
        return "external server answers"

    def _start_embedded_broker(self) -> str:
        from mw_core.local.broker import EmbeddedBroker

        if self.broker is None:
            # The broker keeps nothing on disk; its state dir only holds its log.
            self.broker = EmbeddedBroker(self.state_dir / "logs", host=INFRA_HOST)
        self.kafka_bootstrap = self.broker.start()
        return str(self.kafka_bootstrap)

    def _ensure_topics(self) -> str:
        from mw_core.adapters import bus

        created = asyncio.run(bus.ensure_topics(self.resolved_settings()))
        return f"created topics {created}" if created else "topics exist"

    def _apply_schema(self) -> str:
        from mw_core.adapters import db

        url = self.app_db_url
        if url is None:
            raise RuntimeError("no database URL")

        async def apply() -> Any:
            pool = await db.create_pool(url, min_size=1, max_size=1)
            try:
                return await db.apply_schema(pool)
            finally:
                await pool.close()

        self.schema_info = asyncio.run(apply())
        info = self.schema_info
        return f"schema v{info.version}, TimescaleDB {'on' if info.timescale else 'off'}"

    def _prepare_dagster_home(self) -> None:
        self.dagster_home.mkdir(parents=True, exist_ok=True)
        target = self.dagster_home / "dagster.yaml"
        source = self.workspace.parent / "dagster.yaml" if self.workspace else None
        if source is not None and source.is_file():
            shutil.copyfile(source, target)
        elif not target.exists():
            target.write_text(DEFAULT_DAGSTER_YAML)

    def _clear_replay_ready(self) -> None:
        self.replay_ready.unlink(missing_ok=True)

    def _replay_healthy(self) -> bool:
        return self.replay_urls() is not None

    def _dagster_loaded(self) -> bool:
        """The webserver answers AND every code location has loaded (`/server_info` answers earlier)."""
        import urllib.request

        query = b'{"query": "{ workspaceOrError { ... on Workspace { locationEntries { loadStatus } } } }"}'
        req = urllib.request.Request(  # noqa: S310 - our own loopback URL
            f"{self.dagster_url}/graphql", data=query, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(req, timeout=2) as resp:  # noqa: S310
                body = orjson.loads(resp.read())
        except (OSError, ValueError):
            return False
        entries = (((body.get("data") or {}).get("workspaceOrError") or {}).get("locationEntries")) or []
        return bool(entries) and all(e.get("loadStatus") == "LOADED" for e in entries)

    def _ingest_health(self) -> bool:
        # Any answer means the service runs; 503 (e.g. live source unreachable) is reported, not fatal.
        return http_ok(self.meta()["ingest_health"], any_status=True)

    def _process_health(self) -> bool:
        return http_ok(self.meta()["process_health"], any_status=True)

    # --- specs ------------------------------------------------------------------------------------
    def specs(self) -> list[Spec]:
        timeout = self.options.start_timeout_s
        mw = mw_command()
        specs: list[Spec] = []
        if self.settings.database_url is None:
            specs.append(
                ManagedSpec(
                    "postgres",
                    start=self._start_embedded_postgres,
                    stop=lambda t: self.pg.stop(timeout=max(1.0, t)) if self.pg else None,
                    pid=lambda: self.pg.pid() if self.pg else None,
                    health=lambda: self.pg is not None and tcp_ok(INFRA_HOST, self.pg.port),
                    on_ready=self._create_databases,
                    address=lambda: redact_url(self.app_db_url) if self.app_db_url else "",
                    log=self.state_dir / "pg.log",
                    orphan_signal=2,  # SIGINT: PostgreSQL fast shutdown
                    start_timeout=timeout,
                    stop_timeout=8.0,
                )
            )
        else:
            specs.append(
                StepSpec(
                    "postgres",
                    self._check_external_postgres,
                    address=lambda: redact_url(self.app_db_url or ""),
                    done_state="external",
                )
            )
        if self.settings.kafka_bootstrap is None:
            specs.append(
                ManagedSpec(
                    "kafka",
                    start=self._start_embedded_broker,
                    stop=lambda t: self.broker.stop(timeout=max(0.5, t)) if self.broker else None,
                    pid=lambda: self.broker.pid if self.broker else None,
                    health=lambda: self.broker is not None and tcp_ok(INFRA_HOST, self.broker.port),
                    on_ready=lambda: log.info("kafka: %s", self._ensure_topics()),
                    address=lambda: self.kafka_bootstrap or "",
                    log=self.state_dir / "logs" / "broker.log",
                    start_timeout=30.0,
                    stop_timeout=3.0,
                )
            )
        else:
            specs.append(
                StepSpec(
                    "kafka",
                    self._ensure_topics,
                    address=lambda: self.kafka_bootstrap or "",
                    done_state="external",
                )
            )
        specs.append(StepSpec("schema", self._apply_schema))

        dagster_target = ["-w", str(self.workspace)] if self.workspace else ["-m", "mw_dagster.definitions"]
        dagster_cwd = self.workspace.parent if self.workspace else None
        specs.append(
            ComponentSpec(
                "dagster-webserver",
                [
                    *script("dagster-webserver", "dagster_webserver"),
                    "-h",
                    self.host,
                    "-p",
                    str(self.dagster_port),
                    *dagster_target,
                ],
                env=self.dagster_env,
                cwd=dagster_cwd,
                health=self._dagster_loaded,
                before_start=self._prepare_dagster_home,
                address=self.dagster_url,
                start_timeout=timeout,
                stop_timeout=5.0,
            )
        )
        specs.append(
            ComponentSpec(
                "dagster-daemon",
                [*script("dagster-daemon", "dagster._daemon"), "run", *dagster_target],
                env=self.dagster_env,
                cwd=dagster_cwd,
                min_uptime=0.5,
                before_start=self._prepare_dagster_home,
                address="(scheduler, sensors, run queue)",
                start_timeout=timeout,
                stop_timeout=5.0,
            )
        )
        if self.replaying:
            argv = [
                *mw,
                "replay-server",
                *self.options.replay,
                "--speed",
                str(self.options.speed),
                "--host",
                INFRA_HOST,
                "--ready-file",
                str(self.replay_ready),
            ]
            if self.options.loop:
                argv.append("--loop")
            specs.append(
                ComponentSpec(
                    "replay",
                    argv,
                    env=self.service_env,
                    health=self._replay_healthy,
                    before_start=self._clear_replay_ready,
                    address=lambda: (self.replay_urls() or {}).get("ws_url", ""),
                    start_timeout=60.0,
                    stop_timeout=3.0,
                )
            )
        specs.append(
            ComponentSpec(
                "ingest",
                [*mw, "ingest"],
                env=self.ingest_env,
                health=self._ingest_health,
                address=self.meta()["ingest_health"],
                start_timeout=60.0,
                stop_timeout=5.0,
            )
        )
        specs.append(
            ComponentSpec(
                "process",
                [*mw, "process"],
                env=lambda: {**self.service_env(), "MW_METRICS_PORT": str(self.process_port)},
                health=self._process_health,
                address=self.meta()["process_health"],
                start_timeout=60.0,
                stop_timeout=8.0,
            )
        )
        return specs

    # --- live source report ------------------------------------------------------------------------
    @property
    def price_source(self) -> str:
        if self.replaying:
            return "replay of " + ", ".join(Path(p).name for p in self.options.replay)
        return self.settings.binance_ws_url

    def source_report(self) -> list[str]:
        """Best-effort one-line banners about the price source (from the ingest /healthz)."""
        return source_banners(self.meta())


_FEED_PROBES: dict[str, tuple[float, bool]] = {}
_FEED_PROBE_TTL_S = 60.0


def _feed_reachable(url: str) -> bool:
    """TCP reachability of a feed's host, cached for a minute (the status view refreshes often)."""
    now = time.monotonic()
    cached = _FEED_PROBES.get(url)
    if cached is not None and now - cached[0] < _FEED_PROBE_TTL_S:
        return cached[1]
    parsed = urlparse(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    ok = bool(parsed.hostname) and tcp_ok(str(parsed.hostname), port, timeout=0.5)
    _FEED_PROBES[url] = (now, ok)
    return ok


def feed_banner(feeds: Sequence[str]) -> list[str]:
    """One banner for the news feeds: reachable or not (the rss sensor retries every minute)."""
    if not feeds:
        return []
    down = [f for f in feeds if not _feed_reachable(f)]
    if not down:
        return [f"news feeds: {len(feeds)} reachable"]
    host = urlparse(down[0]).hostname or down[0]
    return [
        f"news feeds: {len(down)} of {len(feeds)} unreachable (first: {host}) - offline? headlines stay "
        "empty; rss_poll_sensor retries every minute"
    ]


def source_banners(meta: dict[str, Any]) -> list[str]:
    """Banners about the live sources from status meta (`Stack.meta`): ingest /healthz, feeds."""
    return _price_banner(meta) + feed_banner([str(f) for f in meta.get("rss_feeds") or []])


def _price_banner(meta: dict[str, Any]) -> list[str]:
    url = meta.get("ingest_health")
    source = str(meta.get("price_source") or "Binance")
    if not url:
        return []
    answer = http_status(str(url), timeout=0.5)
    if answer is None:
        return [f"price source {source}: ingest not answering"]
    code, body = answer
    try:
        health = orjson.loads(body)
    except orjson.JSONDecodeError:
        health = {}
    if not isinstance(health, dict):
        health = {}
    status = str(health.get("status", code))
    if status == "ok":
        return [f"price source {source}: OK"]
    detail = ""
    for key in ("degraded", "error", "detail", "reason", "last_error", "message"):
        if health.get(key):
            detail = f" ({health[key]})"
            break
    hint = "" if meta.get("replay") else " - offline? `mw up --replay sample` replays a recorded day"
    return [f"price source {source}: {status}{detail}{hint}"]


class FirstTickProbe:
    """Background thread: seconds from `Stack.started_at` until the processor made a tick durable.

    Reads the processor's ``/healthz``: a tick is durable once the processor stored a batch and
    committed its offsets (it writes PostgreSQL before committing Kafka). Replaying a day that is
    already in the database still counts, as the idempotent write is durable too.
    """

    def __init__(self, stack: Stack, *, timeout: float = 300.0) -> None:
        self.stack = stack
        self.timeout = timeout
        self.seconds: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="first-tick-probe", daemon=True)

    @property
    def started(self) -> bool:
        return self._thread.ident is not None

    def start(self) -> FirstTickProbe:
        if not self.started:
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        url = self.stack.meta()["process_health"]
        deadline = time.monotonic() + self.timeout
        while not self._stop.is_set() and time.monotonic() < deadline:
            answer = http_status(url, timeout=1.0)
            if answer is not None and durable(answer[1]):
                self.seconds = round((datetime.now(UTC) - self.stack.started_at).total_seconds(), 2)
                log.info("first tick durable %.1fs after `mw up`", self.seconds)
                return
            self._stop.wait(0.25)


def durable(health_body: bytes) -> bool:
    """True when a processor `/healthz` body shows a stored and committed batch."""
    try:
        health = orjson.loads(health_body)
    except orjson.JSONDecodeError:
        return False
    if not isinstance(health, dict):
        return False
    stored = health.get("stored") or 0
    return bool(stored) and health.get("last_commit_age_s") is not None


# --- production init job -------------------------------------------------------------------------


def libpq_url(url: str) -> str:
    """A SQLAlchemy URL (``postgresql+psycopg2://``) as libpq/asyncpg wants it."""
    scheme, sep, rest = url.partition("://")
    return f"{scheme.split('+', 1)[0]}{sep}{rest}" if sep else url


def database_name(url: str) -> str:
    base = url.partition("?")[0]
    return base.rpartition("/")[2]


def initialize(settings: Settings, *, dagster_pg_url: str | None = None, wait_s: float = 60.0) -> list[str]:
    """Create the databases, Kafka topics and schema against configured servers (the compose init job).

    Waits up to `wait_s` for each server to answer (a healthy container may still be starting).
    Returns one line per step for the job's log.
    """
    from mw_core.adapters import bus, db

    if settings.database_url is None or settings.kafka_bootstrap is None:
        raise ValueError(
            "`mw init` needs MW_DATABASE_URL and MW_KAFKA_BOOTSTRAP (it never starts embedded servers)"
        )
    app_url = settings.database_url.get_secret_value()
    done: list[str] = []
    targets = [app_url]
    if dagster_pg_url:
        targets.append(libpq_url(dagster_pg_url))
    for url in targets:
        name = database_name(url)
        created = _retry(
            lambda url=url, name=name: asyncio.run(create_database(with_database(url, "postgres"), name)),
            what=f"PostgreSQL at {redact_url(url)}",
            wait_s=wait_s,
        )
        done.append(f"database {name}: {'created' if created else 'exists'}")
    created_topics = _retry(
        lambda: asyncio.run(bus.ensure_topics(settings)),
        what=f"Kafka at {settings.kafka_bootstrap}",
        wait_s=wait_s,
    )
    done.append(f"topics: created {created_topics}" if created_topics else "topics: exist")

    async def apply() -> Any:
        pool = await db.create_pool(app_url, min_size=1, max_size=1)
        try:
            return await db.apply_schema(pool)
        finally:
            await pool.close()

    info = asyncio.run(apply())
    done.append(f"schema v{info.version}, TimescaleDB {'on' if info.timescale else 'off'}")
    return done


def _retry(fn: Any, *, what: str, wait_s: float) -> Any:
    deadline = time.monotonic() + wait_s
    delay = 0.5
    while True:
        try:
            return fn()
        except (OSError, ConnectionError, TimeoutError) as exc:
            error: Exception = exc
        except Exception as exc:  # asyncpg / aiokafka errors while the server is still starting
            if "password authentication failed" in str(exc) or "permission denied" in str(exc):
                raise
            error = exc
        if time.monotonic() + delay > deadline:
            raise RuntimeError(f"{what} not reachable after {wait_s:.0f}s: {error}") from error
        log.warning("%s not ready (%s); retrying in %.1fs", what, type(error).__name__, delay)
        time.sleep(delay)
        delay = min(delay * 2, 5.0)
