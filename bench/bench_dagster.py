"""Benchmark: materialize one `price_anomalies` partition (one day of 1-minute ticks, 500 symbols).

Generates seeded geometric random walks (with a few injected jumps so there is something to find)
for ``--symbols`` symbols over one UTC day plus the 15-minute warm-up before it, loads them with
COPY into a fresh database, then times ``dg.materialize([price_anomalies], partition_key=DAY)``
end to end (Dagster run included) and prints the seconds with the asset's own read / detect / write
split. Target on a 2-core box: < 10 s for 500 symbols (720,000 partition rows).

    python bench/bench_dagster.py                      # embedded PostgreSQL in a temp dir
    MW_DATABASE_URL=postgresql://... python bench/bench_dagster.py --symbols 500
    (with MW_DATABASE_URL: a database named mw_bench_<random> is created on that server and dropped)
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import random
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import dagster as dg

from mw_core.local.pg_urls import with_database
from mw_core.local.postgres import EmbeddedPostgres
from mw_dagster.markets.assets import price_anomalies
from mw_dagster.resources import PostgresResource

DAY = "2024-08-05"
WARMUP_MIN = 15


def _records(symbols: int, minutes: int, seed: int) -> list[tuple[str, datetime, float, str]]:
    rng = random.Random(seed)
    start = datetime.fromisoformat(DAY).replace(tzinfo=UTC) - timedelta(minutes=WARMUP_MIN)
    times = [start + timedelta(minutes=i, seconds=59, milliseconds=999) for i in range(minutes + WARMUP_MIN)]
    out: list[tuple[str, datetime, float, str]] = []
    for s in range(symbols):
        name = f"S{s:04d}USDT"
        price = rng.uniform(0.1, 50_000)
        jump_at = rng.randrange(WARMUP_MIN + 30, len(times)) if s % 10 == 0 else -1
        for i, ts in enumerate(times):
            price *= math.exp(rng.gauss(0, 0.0015))
            if i == jump_at:
                price *= rng.choice((0.94, 1.06))
            out.append((name, ts, round(price, 8), "bench"))
    return out


async def _load(url: str, records: list[tuple[str, datetime, float, str]]) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.copy_records_to_table(
            "prices", records=records, columns=["symbol", "ts", "price", "source"]
        )
        await conn.execute("ANALYZE prices")
    finally:
        await conn.close()


async def _admin(server_url: str, sql: str) -> None:
    conn = await asyncpg.connect(server_url)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def run(server_url: str, *, symbols: int, minutes: int, seed: int) -> float:
    name = f"mw_bench_{uuid.uuid4().hex[:10]}"
    asyncio.run(_admin(server_url, f'CREATE DATABASE "{name}"'))
    url = with_database(server_url, name)
    try:
        postgres = PostgresResource(database_url=url)
        postgres.apply_schema()
        t0 = time.perf_counter()
        records = _records(symbols, minutes, seed)
        t1 = time.perf_counter()
        asyncio.run(_load(url, records))
        t2 = time.perf_counter()
        print(f"generated {len(records):,} ticks in {t1 - t0:.2f}s, COPY in {t2 - t1:.2f}s")

        started = time.perf_counter()
        result = dg.materialize([price_anomalies], resources={"postgres": postgres}, partition_key=DAY)
        elapsed = time.perf_counter() - started
        meta = {
            k: v.value
            for k, v in result.asset_materializations_for_node("price_anomalies")[0].metadata.items()
        }
        print(
            f"price_anomalies[{DAY}]: {meta['rows_scanned']:,} rows scanned ({meta['warmup_rows']:,} warm-up), "
            f"{meta['symbols']} symbols, {meta['anomalies_found']} anomalies"
        )
        print(f"  read {meta['read_s']}s  detect {meta['detect_s']}s  write+agreement {meta['write_s']}s")
        print(f"materialize seconds: {elapsed:.2f}  (target < 10 s)")
        return elapsed
    finally:
        asyncio.run(_admin(server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--symbols", type=int, default=500)
    parser.add_argument("--minutes", type=int, default=1440, help="minutes of the day (1440 = full day)")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    external = os.environ.get("MW_DATABASE_URL")
    if external:
        run(with_database(external, "postgres"), symbols=args.symbols, minutes=args.minutes, seed=args.seed)
        return
    with tempfile.TemporaryDirectory(prefix="mw-bench-pg-") as tmp:
        server = EmbeddedPostgres(Path(tmp) / "data")
        server_url = server.start()
        try:
            run(server_url, symbols=args.symbols, minutes=args.minutes, seed=args.seed)
        finally:
            server.stop()


if __name__ == "__main__":
    main()
