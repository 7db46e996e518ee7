"""`mw backtest --from-db`: stored prices give the same alerts as the kline files they came from."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import asyncpg
import pytest
import typer
from typer.testing import CliRunner

from mw_core.adapters.postgres.prices import insert_ticks
from mw_core.batch.backtest import BacktestOptions, backtest_day, backtest_files, backtest_range, day_bounds
from mw_core.cli.backtest import backtest
from mw_core.config import Settings, load_settings
from mw_core.replay.klines import read_sources

pytestmark = pytest.mark.integration

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
CRASH = [FIXTURES / f"{s}-1m-2024-08-05.csv" for s in ("BTCUSDT", "SOLUSDT", "ADAUSDT")]
CALM = FIXTURES / "BTCUSDT-1m-2024-08-18.csv"


@pytest.fixture
async def stored(pool: asyncpg.Pool, db_url: str) -> Settings:
    """The fixture days' ticks (the replay's ticks) in `prices`; settings on that database."""
    ticks = [k.to_tick() for f in read_sources([*CRASH, CALM]) for k in f.klines]
    async with pool.acquire() as conn, conn.transaction():
        await insert_ticks(conn, ticks)
    return load_settings(database_url=db_url)


async def test_db_gives_the_alerts_of_the_files(pool: asyncpg.Pool, stored: Settings) -> None:
    for day, files in (("2024-08-05", CRASH), ("2024-08-18", [CALM])):
        start_ms, end_ms = day_bounds(day)
        options = BacktestOptions(compare={"episodes_enabled": "false"})
        from_db = await backtest_range(pool, stored, start_ms=start_ms, end_ms=end_ms, options=options)
        from_files = backtest_files(files, stored, options)
        assert from_db.as_json() == from_files.as_json()
        assert from_db.compare is not None and from_files.compare is not None
        assert from_db.anomalies == from_files.anomalies and from_db.events == from_files.events


async def test_warmup_before_start_is_read(pool: asyncpg.Pool, stored: Settings) -> None:
    start_ms = day_bounds("2024-08-05")[0] + 3_600_000  # 01:00: the crash starts at 01:08
    run = await backtest_range(pool, stored, start_ms=start_ms, end_ms=start_ms + 3_600_000)
    assert all(len(s.warmup) == 15 for s in run.data.series)  # the longest window (15 min) before
    assert {(r["symbol"], r["alerts"] > 0) for r in run.day_rows()} == {
        ("ADAUSDT", True),
        ("BTCUSDT", True),
        ("SOLUSDT", True),
    }


async def test_day_partition_entry_point(stored: Settings, db_url: str) -> None:
    run = await asyncio.to_thread(
        backtest_day, db_url, stored, "2024-08-05", BacktestOptions(symbols=["SOLUSDT"])
    )
    assert list(run.days["symbol"]) == ["SOLUSDT"]
    summary = run.summary()
    assert summary["detections"] == 63 and 1 <= summary["alerts"] <= 6
    assert summary["first_move_alerted_60s"] == summary["symbol_days_with_moves"] == 1


async def test_cli_from_db(stored: Settings, db_url: str) -> None:
    app = typer.Typer()
    app.command()(backtest)
    app.command("noop")(lambda: None)
    args = ["backtest", "--from-db", "--start", "2024-08-05", "--end", "2024-08-06T00:00:00Z", "--json"]
    res = await asyncio.to_thread(CliRunner().invoke, app, args, env={"MW_DATABASE_URL": db_url})
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    files = backtest_files(CRASH, stored).as_json()
    assert doc["alerts"] == files["alerts"] and doc["days"] == files["days"]
