"""Chaos-suite fixtures: extra databases on the test server and a measurements log.

Every scenario records what it measured with `chaos_record(...)`; the numbers are printed in the
terminal summary (they feed tests/chaos/RESULTS.md) and written to ``<basetemp>/chaos-results.json``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from tests.conftest import create_database, drop_databases

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
        name, url = await create_database(pg_server_url, "mwchaos")
        names.append(name)
        return url

    yield create
    await drop_databases(pg_server_url, names)


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
