"""The path-dependent schema steps (Timescale or portable) run once per database, recorded.

The test servers have no `timescaledb` extension, so the "runs once" behaviour is proven on the
portable path, with an event trigger as the witness of every DDL command the server executes; the
Timescale steps go through the same code (`tests/unit/test_deploy.py` checks they are steps).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest

from mw_core.adapters.postgres import features
from mw_core.adapters.postgres.pool import create_pool
from mw_core.adapters.postgres.schema import apply_schema

pytestmark = pytest.mark.integration

# Every DDL command of the database, with its statement: a witness that needs no extension.
DDL_LOG = [
    "CREATE TABLE ddl_log (id serial PRIMARY KEY, tag text NOT NULL, query text NOT NULL)",
    """
    CREATE FUNCTION log_ddl() RETURNS event_trigger LANGUAGE plpgsql AS $$
    BEGIN
        INSERT INTO ddl_log (tag, query) VALUES (tg_tag, current_query());
    END
    $$
    """,
    "CREATE EVENT TRIGGER log_ddl ON ddl_command_start EXECUTE FUNCTION log_ddl()",
]


@pytest.fixture
async def bare_pool(db_url: str) -> AsyncIterator[asyncpg.Pool]:
    """A pool on a fresh database WITHOUT the schema, its DDL logged by an event trigger."""
    pool = await create_pool(db_url, max_size=4)
    if not await pool.fetchval("SELECT rolsuper FROM pg_roles WHERE rolname = current_user"):
        await pool.close()
        pytest.skip("event triggers need a superuser on the test server")
    for sql in DDL_LOG:
        await pool.execute(sql)
    yield pool
    await pool.close()


async def ddl_since(pool: asyncpg.Pool, after_id: int) -> list[str]:
    rows = await pool.fetch("SELECT query FROM ddl_log WHERE id > $1 ORDER BY id", after_id)
    return [r["query"] for r in rows]


async def test_portable_steps_run_once_and_are_recorded(bare_pool: asyncpg.Pool) -> None:
    first = await apply_schema(bare_pool)
    assert first.timescale is False
    assert first.features_applied == ("portable:1",)
    ddl = " ".join(await ddl_since(bare_pool, 0))
    assert "prices_ts_brin" in ddl and "CREATE OR REPLACE VIEW prices_1m" in ddl
    recorded = await bare_pool.fetch("SELECT feature, version, description FROM schema_features")
    assert [(r["feature"], r["version"]) for r in recorded] == [("portable", 1)]
    assert recorded[0]["description"] == features.PORTABLE_STEPS[0].description

    mark = int(await bare_pool.fetchval("SELECT coalesce(max(id), 0) FROM ddl_log"))
    again, other = await asyncio.gather(apply_schema(bare_pool), apply_schema(bare_pool))
    assert again.features_applied == () and other.features_applied == ()
    # New pool connections create their session's COPY staging table (TEMP): not schema DDL.
    later = [q for q in await ddl_since(bare_pool, mark) if "CREATE TEMP TABLE" not in q]
    # Only the core bookkeeping's CREATE TABLE IF NOT EXISTS schema_version: no feature DDL at all.
    assert all("schema_version" in q for q in later), [q[:200] for q in later]
    assert not any(word in " ".join(later) for word in ("prices", "metrics", "schema_features"))
    assert await bare_pool.fetchval("SELECT count(*) FROM schema_features") == 1
    # The view the step created answers.
    assert await bare_pool.fetchval("SELECT count(*) FROM prices_1m") == 0


async def test_a_database_set_up_by_an_earlier_release_takes_the_steps_once(bare_pool: asyncpg.Pool) -> None:
    """Earlier releases ran the same DDL on every start without recording it: it must be re-runnable."""
    await apply_schema(bare_pool)
    await bare_pool.execute("DROP TABLE schema_features")  # as before this release: nothing recorded
    info = await apply_schema(bare_pool)
    assert info.features_applied == ("portable:1",)
    assert await apply_schema(bare_pool) == info.__class__(
        version=info.version, timescale=False, applied=(), features_applied=()
    )


async def test_after_commit_steps_are_recorded_only_when_they_succeed(
    bare_pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A step outside the transaction (CALL refresh_... on Timescale) that fails is retried next start."""
    failing = features.FeatureStep(2, "fails outside a transaction", ("SELECT 1/0",), in_transaction=False)
    fixed = features.FeatureStep(2, "works outside a transaction", ("VACUUM prices",), in_transaction=False)
    monkeypatch.setattr(features, "PORTABLE_STEPS", (*features.PORTABLE_STEPS, failing))
    with pytest.raises(asyncpg.DivisionByZeroError):
        await apply_schema(bare_pool)
    versions = await bare_pool.fetch("SELECT version FROM schema_features ORDER BY version")
    assert [r["version"] for r in versions] == [1]
    # VACUUM refuses a transaction block: it proves the step really runs outside one.
    monkeypatch.setattr(features, "PORTABLE_STEPS", (*features.PORTABLE_STEPS[:1], fixed))
    assert (await apply_schema(bare_pool)).features_applied == ("portable:2",)
    assert (await apply_schema(bare_pool)).features_applied == ()
