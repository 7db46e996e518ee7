"""Create what Market Watch needs on a PostgreSQL server and a Kafka cluster.

Contract:
- `apply_schema(url)` / `ensure_topics(settings)`: the schema and topics, synchronously (they run
  in `mw up`'s supervisor thread and in `mw init`), each returning one line for a log or a status.
- `initialize(settings)` is `mw init`, the compose init job: against CONFIGURED servers only
  (``MW_DATABASE_URL``, ``MW_KAFKA_BOOTSTRAP``; it never starts embedded ones), it creates the
  ``marketwatch`` database (and Dagster's, given ``DAGSTER_PG_URL``), the topics and the schema. A server
  that is still starting is waited for up to ``wait_s``: transient errors
  (`mw_core.adapters.retry.DB_TRANSIENT` / `KAFKA_TRANSIENT`) are retried with backoff; fatal ones
  (wrong password, missing grant: `FATAL`) fail at once. A server that stays unreachable raises
  ``RuntimeError("<server> not reachable after <n>s: <last error>")``; URLs in it are redacted.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from functools import partial
from typing import TypeVar

from mw_core.adapters import bus
from mw_core.adapters.postgres.pool import create_pool
from mw_core.adapters.postgres.schema import SchemaInfo
from mw_core.adapters.postgres.schema import apply_schema as apply_schema_on
from mw_core.adapters.retry import DB_TRANSIENT, FATAL, KAFKA_TRANSIENT, retry_sync
from mw_core.config import Settings, redact_url
from mw_core.local.pg_urls import database_name, libpq_url, with_database
from mw_core.local.runtime import create_database

log = logging.getLogger(__name__)

T = TypeVar("T")


def apply_schema(url: str) -> SchemaInfo:
    """Apply the versioned schema on the database at `url` (one short-lived connection)."""

    async def apply() -> SchemaInfo:
        pool = await create_pool(url, min_size=1, max_size=1)
        try:
            return await apply_schema_on(pool)
        finally:
            await pool.close()

    return asyncio.run(apply())


def describe_schema(info: SchemaInfo) -> str:
    return f"schema v{info.version}, TimescaleDB {'on' if info.timescale else 'off'}"


def ensure_topics(settings: Settings) -> list[str]:
    """Create the missing topics on ``settings.kafka_bootstrap``; return the ones created."""
    return asyncio.run(bus.ensure_topics(settings))


def _create_database(server_url: str, name: str) -> bool:
    return asyncio.run(create_database(server_url, name))


def when_reachable(
    fn: Callable[[], T], *, what: str, retry_on: tuple[type[BaseException], ...], wait_s: float
) -> T:
    """``fn()``, retried while it fails with a transient error, for up to `wait_s` seconds."""

    def on_retry(attempt: int, exc: BaseException, delay: float) -> None:
        log.warning("%s not ready (%s); retrying in %.1fs", what, type(exc).__name__, delay)

    try:
        return retry_sync(fn, retry_on=retry_on, base_s=0.5, cap_s=5.0, deadline_s=wait_s, on_retry=on_retry)
    except FATAL:
        raise
    except retry_on as exc:
        raise RuntimeError(f"{what} not reachable after {wait_s:.0f}s: {exc}") from exc


def initialize(settings: Settings, *, wait_s: float = 60.0) -> list[str]:
    """`mw init` (see the module docstring); returns one line per step for the job's log."""
    if settings.database_url is None or settings.kafka_bootstrap is None:
        raise ValueError(
            "`mw init` needs MW_DATABASE_URL and MW_KAFKA_BOOTSTRAP (it never starts embedded servers)"
        )
    app_url = settings.database_url.get_secret_value()
    done: list[str] = []
    targets = [app_url]
    if settings.dagster_pg_url is not None:
        targets.append(libpq_url(settings.dagster_pg_url.get_secret_value()))
    for url in targets:
        name = database_name(url)
        created = when_reachable(
            partial(_create_database, with_database(url, "postgres"), name),
            what=f"PostgreSQL at {redact_url(url)}",
            retry_on=DB_TRANSIENT,
            wait_s=wait_s,
        )
        done.append(f"database {name}: {'created' if created else 'exists'}")
    created_topics = when_reachable(
        lambda: ensure_topics(settings),
        what=f"Kafka at {settings.kafka_bootstrap}",
        retry_on=KAFKA_TRANSIENT,
        wait_s=wait_s,
    )
    done.append(f"topics: created {created_topics}" if created_topics else "topics: exist")
    done.append(describe_schema(apply_schema(app_url)))
    return done
