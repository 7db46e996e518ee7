"""Chaos-suite fixtures: extra databases on the test server and a measurements log.

Every scenario records what it measured with `chaos_record(...)`; the numbers are printed in the
terminal summary (they feed tests/chaos/RESULTS.md) and written to ``<basetemp>/chaos-results.json``.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import pytest

_RESULTS: list[dict[str, Any]] = []


@pytest.fixture
def chaos_record(request: pytest.FixtureRequest) -> Callable[..., None]:
    """Record measured numbers of the current scenario (name = the test's name)."""

    def record(**numbers: Any) -> None:
        _RESULTS.append({"scenario": request.node.name, **numbers})

    return record


@pytest.fixture
async def make_db(pg_server_url: str) -> AsyncIterator[Callable[[], Awaitable[str]]]:
    """Factory of extra empty databases on the test server (dropped afterwards)."""
    names: list[str] = []

    async def create() -> str:
        name = f"mwchaos_{uuid.uuid4().hex[:12]}"
        conn = await asyncpg.connect(pg_server_url)
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        names.append(name)
        base, _, query = pg_server_url.partition("?")
        head, _, _ = base.rpartition("/")
        return f"{head}/{name}" + (f"?{query}" if query else "")

    yield create
    conn = await asyncpg.connect(pg_server_url)
    try:
        for name in names:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    if not _RESULTS:
        return
    terminalreporter.section("chaos measurements")
    for row in _RESULTS:
        terminalreporter.write_line(json.dumps(row, default=str))
    basetemp = config.option.basetemp
    if basetemp:
        path = f"{basetemp}/chaos-results.json"
        try:
            with open(path, "w") as fh:
                json.dump(_RESULTS, fh, indent=1, default=str)
        except OSError:
            pass
