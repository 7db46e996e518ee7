"""The whole local platform as supervisor specs: what `mw up` runs, in order.

Contract:
- `Stack(settings, ...)` builds, from one `Settings`, the ordered specs for `Supervisor`:

  1. ``postgres``: the embedded PostgreSQL under ``state_dir/pg`` (or the external
     ``MW_DATABASE_URL``, checked), then databases ``marketwatch`` and ``dagster`` created if missing;
  2. ``kafka``: the embedded memory-only broker (or ``MW_KAFKA_BOOTSTRAP``), then the topics
     (re-created after a broker restart, since the embedded broker keeps nothing); its memory is
     capped by the rollover that `mw up` attaches (`mw_core.local.rollover.attach_rollover`);
  3. ``schema``: `mw_core.local.provision.apply_schema`;
  4. ``dagster-webserver`` and ``dagster-daemon``: run directly (never ``dagster dev``, which
     ignores SIGTERM when started from a non-interactive shell), ``DAGSTER_HOME=state_dir/dagster``
     with ``dagster.yaml`` copied there, run/event/schedule storage in the ``dagster`` database
     (or ``DAGSTER_PG_URL``);
  5. ``replay`` (only with replay files): ``mw replay-server`` on 127.0.0.1, which writes its URLs to
     ``state_dir/replay.json``;
  6. ``ingest`` (``mw ingest``, pointed at the replay server when replaying), ``process``
     (``mw process``) and ``notify`` (``mw notify``: consumes only the alerts topic; always started
     so `mw status` shows it, it logs "no channels configured" and delivers nothing until
     ``MW_NOTIFY_URLS`` / ``MW_WEBHOOK_URL`` are set), each with ``/healthz`` on ``host:<free port>``.

- Children get the resolved URLs through ``MW_*`` variables; status addresses never contain
  passwords. Servers without authentication (embedded PostgreSQL with trust auth, the embedded
  broker) always bind 127.0.0.1; ``host`` applies to the Dagster UI and the metrics endpoints.
- What the status view says about the live sources is `mw_core.local.banners`; creating
  databases, topics and the schema is `mw_core.local.provision` (shared with `mw init`).
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from pydantic import SecretStr

from mw_core.config import Settings, redact_url
from mw_core.local.banners import source_banners
from mw_core.local.pg_urls import sqlalchemy_url, with_database
from mw_core.local.ports import free_port, port_free, port_open
from mw_core.local.probes import http_ok
from mw_core.local.provision import apply_schema, describe_schema, ensure_topics
from mw_core.local.runtime import APP_DATABASE, DAGSTER_DATABASE, create_database
from mw_core.local.specs import ComponentSpec, ManagedSpec, Spec, StepSpec
from mw_core.local.state_files import read_json

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
    """`preferred`, else Dagster's usual 3000 when nothing uses it, else a free port."""
    if preferred:
        return preferred
    if not port_open(connect_host(host), DEFAULT_DAGSTER_PORT, timeout=0.2) and port_free(
        host, DEFAULT_DAGSTER_PORT
    ):
        return DEFAULT_DAGSTER_PORT
    return free_port(host)


@dataclass
class StackOptions:
    """What `mw up` was asked for (flags), on top of `Settings`."""

    replay: Sequence[str] = ()
    loop: bool = False
    speed: str = "60"
    host: str | None = None
    dagster_port: int | None = None
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
        self.notify_port = free_port(self.host)
        self.replay_ready = self.state_dir / REPLAY_READY_FILE
        self.started_at = datetime.now(UTC)
        # Resolved while starting (full URLs stay in memory and in children's environment only).
        self.app_db_url: str | None = (
            settings.database_url.get_secret_value() if settings.database_url else None
        )
        # External Dagster storage when configured (DAGSTER_PG_URL), else found next to the app's.
        self.external_dagster_pg_url: str | None = (
            settings.dagster_pg_url.get_secret_value() if settings.dagster_pg_url else None
        )
        self.dagster_pg_url: str | None = self.external_dagster_pg_url
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
            "notify_health": f"http://{connect_host(self.host)}:{self.notify_port}/healthz",
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
        if not self.external_dagster_pg_url:
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
        from mw_core.adapters.postgres.pool import ping

        if self.app_db_url is None:
            raise RuntimeError("no database URL")
        asyncio.run(ping(self.app_db_url))
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
            self.broker = EmbeddedBroker(
                self.state_dir / "logs", host=INFRA_HOST, log_filter=self.settings.broker_log
            )
        self.kafka_bootstrap = self.broker.start()
        return str(self.kafka_bootstrap)

    def _ensure_topics(self) -> str:
        created = ensure_topics(self.resolved_settings())
        return f"created topics {created}" if created else "topics exist"

    def _apply_schema(self) -> str:
        if self.app_db_url is None:
            raise RuntimeError("no database URL")
        self.schema_info = apply_schema(self.app_db_url)
        return describe_schema(self.schema_info)

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

    def _notify_health(self) -> bool:
        return http_ok(self.meta()["notify_health"], any_status=True)

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
                    health=lambda: self.pg is not None and port_open(INFRA_HOST, self.pg.port),
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
                    health=lambda: self.broker is not None and port_open(INFRA_HOST, self.broker.port),
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
        specs.append(
            ComponentSpec(
                "notify",
                [*mw, "notify"],
                env=lambda: {**self.service_env(), "MW_METRICS_PORT": str(self.notify_port)},
                health=self._notify_health,
                address=self.meta()["notify_health"],
                start_timeout=60.0,
                stop_timeout=8.0,  # the channel workers finish the attempt in flight
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
