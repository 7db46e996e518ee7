"""Helpers for the Dagster tests: kline fixtures as ticks, resources bound to the test database."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import pytest

from mw_core import db
from mw_core.models import Tick
from mw_dagster.resources import KafkaResource, LLMResource, PostgresResource, RSSResource

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def kline_ticks(symbol: str, day: str = "2024-08-05") -> list[Tick]:
    """A Binance 1-minute kline CSV as ticks: ts = close time (ms), price = close."""
    with (FIXTURES / f"{symbol}-1m-{day}.csv").open(newline="") as fh:
        return [
            Tick(
                symbol,
                int(row["close_time_ms"]),
                float(row["close"]),
                open=float(row["open"]),
                high=float(row["high"]),
                low=float(row["low"]),
                base_volume=float(row["volume"]),
                quote_volume=float(row["quote_volume"]),
                source="replay",
            )
            for row in csv.DictReader(fh)
        ]


def insert_ticks(postgres: PostgresResource, ticks: Sequence[Tick]) -> None:
    postgres.run(lambda pool: db.write_batch(pool, ticks))


@pytest.fixture
def postgres(db_url: str) -> PostgresResource:
    """PostgresResource on this test's fresh database, schema applied."""
    resource = PostgresResource(database_url=db_url)
    resource.apply_schema()
    return resource


@pytest.fixture
def resources(postgres: PostgresResource) -> dict[str, object]:
    """All resources, offline: no Kafka, template LLM, no feeds."""
    return {
        "postgres": postgres,
        "kafka": KafkaResource(),
        "llm": LLMResource(provider="template"),
        "rss": RSSResource(),
    }
