"""The processor's batch write (`store_batch`) and `insert_ticks` against a real PostgreSQL.

A batch is written as COPY + one statement; a replayed batch (stored before, e.g. re-read after a
crash) must fail the plain INSERT loudly, leave nothing half-written, and go through with
``replay=True``. Small batches take the one-statement `unnest` path.
"""

from __future__ import annotations

import asyncpg
import pytest

from mw_core.adapters.postgres.prices import COPY_MIN_TICKS, MetricRow, insert_ticks, store_batch
from mw_core.models import Tick

pytestmark = pytest.mark.integration

T0 = 1_722_816_059_999


def ticks(n: int, *, start: int = 0, symbol: str = "BTCUSDT") -> list[Tick]:
    return [Tick(symbol, T0 + (start + k) * 1000, 50_000.0 + k, source="ws") for k in range(n)]


def metrics(ts: int, ret: float) -> list[MetricRow]:
    return [("BTCUSDT", ts, 60, ret, 0.001, 60), ("BTCUSDT", ts, 300, ret / 2, None, 1)]


async def counts(pool: asyncpg.Pool) -> tuple[int, int, int]:
    row = await pool.fetchrow(
        "SELECT (SELECT count(*) FROM prices), (SELECT count(DISTINCT (symbol, ts)) FROM prices),"
        " (SELECT count(*) FROM metrics)"
    )
    assert row is not None
    return row[0], row[1], row[2]


async def test_large_batch_then_its_replay(pool: asyncpg.Pool) -> None:
    batch = ticks(COPY_MIN_TICKS + 50)
    last = batch[-1].ts
    async with pool.acquire() as conn, conn.transaction():
        await store_batch(conn, batch, metrics(last, 0.01))
    assert await counts(pool) == (len(batch), len(batch), 2)

    # The same batch again plus new ticks (a replay after a crash): the plain INSERT refuses,
    # and the aborted transaction leaves nothing behind (not even the new metrics).
    replayed = batch + ticks(100, start=len(batch))
    with pytest.raises(asyncpg.UniqueViolationError):
        async with pool.acquire() as conn, conn.transaction():
            await store_batch(conn, replayed, metrics(replayed[-1].ts, 0.02))
    assert await counts(pool) == (len(batch), len(batch), 2)

    async with pool.acquire() as conn, conn.transaction():
        await store_batch(conn, replayed, metrics(replayed[-1].ts, 0.02), replay=True)
    assert await counts(pool) == (len(replayed), len(replayed), 4)
    stored = await pool.fetch("SELECT price, source FROM prices ORDER BY ts")
    assert [(r["price"], r["source"]) for r in stored] == [(t.price, "ws") for t in replayed]
    # Metrics are an upsert: the same (symbol, ts, window) again takes the new values.
    async with pool.acquire() as conn, conn.transaction():
        await store_batch(conn, [], metrics(last, 0.05))
    assert (
        await pool.fetchval(
            "SELECT ret FROM metrics WHERE window_s = 60 AND ts = timestamptz 'epoch' + $1 * interval '1 millisecond'",
            last,
        )
        == 0.05
    )


async def test_small_batches_are_idempotent_in_one_statement(pool: asyncpg.Pool) -> None:
    small = ticks(10, symbol="SOLUSDT")
    for _ in range(2):  # a replay of a small batch needs no second attempt
        async with pool.acquire() as conn, conn.transaction():
            await store_batch(conn, small, metrics(small[-1].ts, 0.01))
    assert await counts(pool) == (10, 10, 2)


async def test_insert_ticks_keeps_its_idempotent_contract(pool: asyncpg.Pool) -> None:
    big = ticks(COPY_MIN_TICKS * 2)
    for chunk in (big[:300], big, big[100:]):  # overlapping COPY batches: savepoint path
        async with pool.acquire() as conn, conn.transaction():
            await insert_ticks(conn, chunk)
            # The transaction is usable after a conflict inside the savepoint.
            assert await conn.fetchval("SELECT count(*) FROM prices_stage") == len(chunk)
    assert await counts(pool) == (len(big), len(big), 0)
