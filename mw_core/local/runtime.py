"""Resolve infrastructure for a command: configured URLs, or embedded servers started on demand.

Contract: `ensure_infra(settings)` returns `Infra` whose `settings` carry concrete
`database_url` / `kafka_bootstrap`. Without `MW_DATABASE_URL` the embedded PostgreSQL under
`state_dir/pg` is started (or reused when already running) and the `marketwatch` database created;
without `MW_KAFKA_BOOTSTRAP` a memory-only Tansu broker is started for this process. `Infra.close()`
stops the broker it started, and the PostgreSQL server only with ``stop_postgres=True`` and only when
this call started it (services leave a shared embedded server running for the next command).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

import asyncpg
from pydantic import SecretStr

from mw_core.config import Settings
from mw_core.local.broker import EmbeddedBroker
from mw_core.local.pg_urls import with_database
from mw_core.local.postgres import EmbeddedPostgres

log = logging.getLogger(__name__)

APP_DATABASE = "marketwatch"
DAGSTER_DATABASE = "dagster"


async def create_database(server_url: str, name: str) -> bool:
    """CREATE DATABASE `name` when missing (names are fixed identifiers, never user input)."""
    if not name.isidentifier():
        raise ValueError(f"bad database name {name!r}")
    conn = await asyncpg.connect(server_url, timeout=10)
    try:
        if await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
            return False
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        except asyncpg.DuplicateDatabaseError:
            return False
        return True
    finally:
        await conn.close()


@dataclass
class Infra:
    settings: Settings
    postgres: EmbeddedPostgres | None = None
    broker: EmbeddedBroker | None = None
    started: list[str] = field(default_factory=list)

    def close(self) -> None:
        if self.broker is not None and "broker" in self.started:
            self.broker.stop()
        if self.postgres is not None and "postgres" in self.started:
            self.postgres.stop()


def ensure_infra(settings: Settings, *, stop_postgres: bool = False) -> Infra:
    """Fill in missing URLs by starting embedded servers. See module docstring."""
    updates: dict[str, object] = {}
    infra = Infra(settings)
    if settings.database_url is None:
        pg = EmbeddedPostgres(settings.state_dir / "pg", host="127.0.0.1")
        was_running = pg.is_running()
        server_url = pg.start()
        asyncio.run(create_database(server_url, APP_DATABASE))
        updates["database_url"] = SecretStr(with_database(server_url, APP_DATABASE))
        infra.postgres = pg
        if not was_running and stop_postgres:
            infra.started.append("postgres")
        log.info(
            "using embedded PostgreSQL %s at 127.0.0.1:%s (data in %s)", pg.version(), pg.port, pg.data_dir
        )
    if settings.kafka_bootstrap is None:
        broker = EmbeddedBroker(settings.state_dir, host="127.0.0.1", log_filter=settings.broker_log)
        updates["kafka_bootstrap"] = broker.start()
        infra.broker = broker
        infra.started.append("broker")
    if updates:
        infra.settings = settings.model_copy(update=updates)
    return infra
