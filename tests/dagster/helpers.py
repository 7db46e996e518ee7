"""Test helpers: Binance kline fixtures as ticks, direct tick inserts, tiny RSS documents."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from mw_core import db
from mw_core.models import Tick
from mw_dagster.resources import PostgresResource

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


def rss(*items: tuple[str, str]) -> bytes:
    now = datetime.now(tz=UTC).strftime("%a, %d %b %Y %H:%M:%S +0000")
    body = "".join(
        f"<item><title>{title}</title><link>https://news.example/{guid}</link><guid>https://news.example/{guid}</guid>"
        f"<pubDate>{now}</pubDate><description>Bitcoin BTC news &lt;b&gt;bold&lt;/b&gt;</description></item>"
        for guid, title in items
    )
    return f'<?xml version="1.0"?><rss version="2.0"><channel><title>t</title>{body}</channel></rss>'.encode()
