"""Broker rollover under load: N ticks through the embedded broker under ``MW_BROKER_MAX_MEMORY_MB``.

Run: ``python bench/broker_rollover.py [--ticks 3000000] [--symbols 500] [--max-memory-mb 64]``
(``--database-url`` uses an existing database instead of a fresh embedded PostgreSQL).

What runs, under one `Supervisor` with the `BrokerRollover` of `mw up` attached, exactly as
`mw up` wires it (`mw_core.local.rollover`):
- ``kafka``: the embedded Tansu broker (managed, restarted by the rollover on the same port);
- ``process``: the real ``python -m mw_core.cli process`` (consumer group ``mw-processor``);
- ``producer``: `bench/tick_producer.py`, which produces ``--ticks`` ticks for ``--symbols``
  symbols straight into ``prices``, each acknowledged, re-sent after failures. It is the
  producer the rollover pauses (SIGSTOP) while the broker is replaced.

A thread samples the broker's RSS every 50 ms. The run ends when the producer is done and the
processor committed everything. Then, in PostgreSQL: ``count(*)`` and
``count(DISTINCT (symbol, ts))`` of ``prices`` must both equal ``--ticks`` (every tick stored
exactly once). Printed: stored / distinct, max broker RSS vs the cap (and 1.5x the cap), the
rollovers, their pause durations, total time. A last line ``RESULT {json}`` holds every number;
exit code 0 when every tick was stored once, at least one rollover happened (``--min-rollovers``)
and the RSS stayed under 1.5x the cap.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import asyncpg

from mw_core.config import Settings, load_settings
from mw_core.local.broker import EmbeddedBroker
from mw_core.local.drain import ConsumerGroup, lag_of
from mw_core.local.ports import free_port, port_open
from mw_core.local.probes import http_ok
from mw_core.local.provision import apply_schema, ensure_topics
from mw_core.local.rollover import MB, BrokerRollover, RolloverPlan
from mw_core.local.specs import ComponentSpec, ManagedSpec, Spec
from mw_core.local.supervisor import Supervisor

HERE = Path(__file__).resolve().parent
log = logging.getLogger("broker_rollover")


class RssSampler(threading.Thread):
    """Max RSS of the broker, sampled every `interval` seconds (whichever broker process runs)."""

    def __init__(self, broker: EmbeddedBroker, interval: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.broker = broker
        self.interval = interval
        self.max_bytes = 0
        self.samples = 0
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.wait(self.interval):
            rss = self.broker.rss_bytes()
            if rss is not None:
                self.samples += 1
                self.max_bytes = max(self.max_bytes, rss)

    def halt(self) -> None:
        self._halt.set()
        self.join(2)


async def _counts(url: str) -> tuple[int, int]:
    conn = await asyncpg.connect(url)
    try:
        row = await conn.fetchrow("SELECT count(*) AS n, count(DISTINCT (symbol, ts)) AS d FROM prices")
        assert row is not None
        return int(row["n"]), int(row["d"])
    finally:
        await conn.close()


def _embedded_database(root: Path) -> tuple[Any, str]:
    from mw_core.local.pg_urls import with_database
    from mw_core.local.postgres import EmbeddedPostgres
    from mw_core.local.runtime import create_database

    pg = EmbeddedPostgres(root / "pg")
    server = pg.start()
    asyncio.run(create_database(server, "rollover"))
    return pg, with_database(server, "rollover")


def run(
    *, ticks: int, symbols: int, max_memory_mb: int, database_url: str, state_dir: Path, timeout_s: float
) -> dict[str, Any]:
    """One run (see the module docstring); returns the numbers."""
    apply_schema(database_url)
    broker = EmbeddedBroker(state_dir / "logs")
    settings: Settings = load_settings(
        database_url=database_url,
        kafka_bootstrap=broker.bootstrap,
        broker_max_memory_mb=max_memory_mb,
        state_dir=state_dir,
        rss_feeds=[],
    )
    done_file = state_dir / "producer-done.json"
    metrics_port = free_port("127.0.0.1")
    env = {
        "MW_DATABASE_URL": database_url,
        "MW_KAFKA_BOOTSTRAP": broker.bootstrap,
        "MW_STATE_DIR": str(state_dir),
        "MW_TOPIC_PRICES": settings.topic_prices,
        "MW_CONSUMER_GROUP": settings.consumer_group,
        "MW_HOST": "127.0.0.1",
    }
    specs: list[Spec] = [
        ManagedSpec(
            "kafka",
            start=broker.start,
            stop=lambda t: broker.stop(timeout=max(0.5, t)),
            pid=lambda: broker.pid,
            health=lambda: port_open("127.0.0.1", broker.port),
            on_ready=lambda: log.info("topics: %s", ensure_topics(settings)),
            address=broker.bootstrap,
            log=state_dir / "logs" / "broker.log",
        ),
        ComponentSpec(
            "process",
            [sys.executable, "-m", "mw_core.cli", "process"],
            env={**env, "MW_METRICS_PORT": str(metrics_port)},
            health=lambda: http_ok(f"http://127.0.0.1:{metrics_port}/healthz", any_status=True),
            start_timeout=60.0,
            stop_timeout=8.0,
        ),
        ComponentSpec(
            "producer",
            [
                sys.executable,
                str(HERE / "tick_producer.py"),
                "--ticks",
                str(ticks),
                "--symbols",
                str(symbols),
                "--done-file",
                str(done_file),
            ],
            env=env,
            restart=False,
            stop_timeout=3.0,
        ),
    ]
    sup = Supervisor(specs, state_dir=state_dir)
    group = ConsumerGroup(settings.consumer_group, (settings.topic_prices,))
    plan = RolloverPlan(
        max_memory_mb=max_memory_mb,
        broker="kafka",
        producers=("producer",),
        consumers=("process",),
        groups=(group,),
        settings=lambda: settings,
        rss_bytes=broker.rss_bytes,
    )
    rollover = BrokerRollover(sup, plan)
    sup.add_watcher(rollover.check)
    sampler = RssSampler(broker)
    started = time.monotonic()
    produced_s: float | None = None
    last_check = 0.0
    error = ""

    def on_tick() -> None:
        nonlocal produced_s, last_check, error
        now = time.monotonic()
        if now - started > timeout_s:
            error = f"timeout after {timeout_s:.0f}s"
            sup.request_stop()
            return
        producer = sup.component("producer")
        if producer["state"] == "failed" and not done_file.exists():
            error = f"producer failed: {producer['detail']}"
            sup.request_stop()
            return
        if not done_file.exists() or now - last_check < 1.0:
            return
        if produced_s is None:
            produced_s = now - started
        last_check = now
        try:
            behind = asyncio.run(lag_of(settings, [group]))
        except Exception as exc:  # broker rolling over right now: ask again
            log.info("lag check failed: %s", exc)
            return
        if behind == 0:
            sup.request_stop()

    sampler.start()
    try:
        sup.run(on_tick=on_tick)
    finally:
        sampler.halt()
    total_s = time.monotonic() - started
    stored, distinct = asyncio.run(_counts(database_url))
    producer_info = json.loads(done_file.read_text()) if done_file.exists() else {}
    max_rss = max(sampler.max_bytes, rollover.stats.max_rss_bytes)
    return {
        "ticks": ticks,
        "symbols": symbols,
        "stored": stored,
        "distinct": distinct,
        "exactly_once": stored == ticks and distinct == ticks,
        "max_memory_mb": max_memory_mb,
        "trigger_mb": round(plan.trigger_bytes / MB, 1),
        "max_broker_rss_mb": round(max_rss / MB, 1),
        "rss_ratio_to_cap": round(max_rss / (max_memory_mb * MB), 3),
        "rss_samples": sampler.samples,
        "rollovers": rollover.stats.rollovers,
        "rollovers_aborted": rollover.stats.aborted,
        "pauses_s": rollover.stats.pauses_s,
        "max_pause_s": max(rollover.stats.pauses_s, default=0.0),
        "producer": producer_info,
        "produce_s": round(produced_s, 1) if produced_s is not None else None,
        "total_s": round(total_s, 1),
        "ticks_per_s": round(ticks / total_s) if total_s else None,
        "error": error,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ticks", type=int, default=3_000_000)
    parser.add_argument("--symbols", type=int, default=500)
    parser.add_argument("--max-memory-mb", type=int, default=64)
    parser.add_argument("--database-url", default=None, help="existing database (default: embedded)")
    parser.add_argument("--timeout", type=float, default=3600.0)
    parser.add_argument("--min-rollovers", type=int, default=1)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    root = Path(tempfile.mkdtemp(prefix="mw-rollover-"))
    pg = None
    try:
        url = args.database_url
        if url is None:
            pg, url = _embedded_database(root)
        result = run(
            ticks=args.ticks,
            symbols=args.symbols,
            max_memory_mb=args.max_memory_mb,
            database_url=url,
            state_dir=root / "state",
            timeout_s=args.timeout,
        )
    finally:
        if pg is not None:
            pg.stop()
    ok = (
        result["exactly_once"]
        and result["rollovers"] >= args.min_rollovers
        and result["rss_ratio_to_cap"] <= 1.5
        and not result["error"]
    )
    print(
        f"ticks {result['ticks']:,} for {result['symbols']} symbols: stored {result['stored']:,}, "
        f"distinct {result['distinct']:,} -> {'exactly once' if result['exactly_once'] else 'MISMATCH'}\n"
        f"broker RSS max {result['max_broker_rss_mb']} MB, cap {result['max_memory_mb']} MB "
        f"(x{result['rss_ratio_to_cap']}; trigger {result['trigger_mb']} MB)\n"
        f"rollovers {result['rollovers']} (aborted {result['rollovers_aborted']}), "
        f"pauses {result['pauses_s']} s\n"
        f"total {result['total_s']} s ({result['ticks_per_s']} ticks/s end to end)"
        + (f"\nERROR {result['error']}" if result["error"] else "")
    )
    print("RESULT " + json.dumps(result))
    if ok:
        shutil.rmtree(root, ignore_errors=True)
    else:
        print(f"state kept in {root}", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
