"""The embedded broker rolls over under its memory cap and loses nothing (`mw_core.local.rollover`).

Runs `bench/broker_rollover.py` at a small scale: the real embedded Tansu broker, the real
``mw process`` and the test PostgreSQL, under a `Supervisor` with the rollover of `mw up`; 200,000
ticks for 500 symbols produced straight into ``prices`` by a supervised producer that the rollover
pauses. Every tick must be stored exactly once, at least one rollover must happen, and the broker's
RSS (sampled every 50 ms) must stay under 1.5x the cap.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import asyncpg
import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[3]
TICKS = 200_000
CAP_MB = 40  # trigger at 24 MB: a fresh broker holds ~15 MB and each tick adds ~70 bytes


async def test_rollover_keeps_every_tick_under_the_cap(db_url: str) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "broker_rollover.py"),
            "--ticks",
            str(TICKS),
            "--symbols",
            "500",
            "--max-memory-mb",
            str(CAP_MB),
            "--database-url",
            db_url,
            "--timeout",
            "240",
        ],
        capture_output=True,
        text=True,
        timeout=280,
        cwd=ROOT,
        check=False,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, f"no RESULT line (rc {proc.returncode}):\n{proc.stdout}\n{proc.stderr[-4000:]}"
    result = json.loads(lines[-1].removeprefix("RESULT "))
    assert not result["error"], result
    assert result["rollovers"] >= 1, result
    assert result["rollovers_aborted"] == 0, result
    assert result["rss_samples"] > 50, result
    assert result["max_broker_rss_mb"] <= 1.5 * CAP_MB, result

    conn = await asyncpg.connect(db_url)
    try:
        row = await conn.fetchrow("SELECT count(*) AS n, count(DISTINCT (symbol, ts)) AS d FROM prices")
    finally:
        await conn.close()
    assert row is not None
    assert (row["n"], row["d"]) == (TICKS, TICKS)
    assert proc.returncode == 0, proc.stdout
