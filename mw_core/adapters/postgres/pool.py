"""asyncpg pools and the PostgreSQL health check.

Contract:
- `create_pool(url)` returns a pool whose connections are prepared for the repositories' bulk
  writes (the per-connection COPY staging table of `prices`). The URL may carry a password; it is
  never logged.
- `ping(pool_or_url)` runs ``SELECT 1`` on a pool, or on a short-lived connection to a URL.
"""

from __future__ import annotations

import asyncpg

from mw_core.adapters.postgres.prices import prepare_connection


async def create_pool(url: str, *, min_size: int = 1, max_size: int = 8) -> asyncpg.Pool:
    """An asyncpg pool. The URL may carry a password; it is never logged."""
    pool = await asyncpg.create_pool(
        url, min_size=min_size, max_size=max_size, command_timeout=60, init=prepare_connection
    )
    assert pool is not None
    return pool


async def ping(pool_or_url: asyncpg.Pool | str) -> int:
    """`SELECT 1` health check."""
    if isinstance(pool_or_url, str):
        conn = await asyncpg.connect(pool_or_url, timeout=5)
        try:
            return int(await conn.fetchval("SELECT 1"))
        finally:
            await conn.close()
    return int(await pool_or_url.fetchval("SELECT 1"))
