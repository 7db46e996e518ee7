"""Fixtures for the Dagster tests: resources bound to this test's fresh database."""

from __future__ import annotations

import pytest

from mw_dagster.resources import PostgresResource


@pytest.fixture
def postgres(db_url: str) -> PostgresResource:
    """PostgresResource on this test's fresh database, schema applied."""
    resource = PostgresResource(database_url=db_url)
    resource.apply_schema()
    return resource
