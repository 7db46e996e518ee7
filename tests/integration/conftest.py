"""Fixtures shared by the integration tests of several rooms."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest

from mw_core.adapters.postgres.pool import create_pool
from mw_core.adapters.postgres.schema import apply_schema


@pytest.fixture
async def pool(db_url: str) -> AsyncIterator[asyncpg.Pool]:
    """A pool on a fresh database (`db_url`) with the schema applied."""
    pool = await create_pool(db_url, max_size=4)
    await apply_schema(pool)
    yield pool
    await pool.close()
