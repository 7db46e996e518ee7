"""Soak test of the streaming stack: a steady 5,000 ticks/s for 500 symbols through Kafka, the real
`mw process` and PostgreSQL, for `--seconds` (default 600: the issue's 10 minutes).

Run: ``python bench/soak.py [--seconds 600] [--rate 5000] [--symbols 500] [--sample-every 30]``

What runs:
- the embedded PostgreSQL and the memory-only Tansu broker (`mw_core.local.runtime.ensure_infra`, state
  in a fresh temporary directory; any ``MW_DATABASE_URL`` / ``MW_KAFKA_BOOTSTRAP`` is ignored, so
  the numbers always describe the embedded stack);
- ``python -m mw_core.cli process`` as a child process (its memory is measured on its own), with
  ``/metrics`` on a free port;
- the producer, in this process: every symbol ticks once per second of EVENT time (seeded
  geometric random walks, as `mw_core.processor.benchmark`), one step of `--symbols` ticks every
  ``symbols / rate`` seconds of wall time, so event time runs ``rate / symbols`` times faster than
  the clock (10x by default) and ends near now. The 900 s window therefore fills after ~90 s of
  wall time: memory measured after that is steady-state, not windows filling up. About every
  2 s one random symbol jumps by 6 %, which raises anomalies and so episode alerts: an ``open``
  per symbol's first jump, rarely an ``escalate`` (the latency samples).

Every `--sample-every` seconds it prints the RSS (sum over the process and its children) and PSS
(the same without double-counting shared pages, e.g. PostgreSQL's shared buffers) of the
processor, the broker, PostgreSQL and this producer, and the processor's lag. At the end:

- start / end RSS per component, and the growth from the first sample after warm-up to the end;
- tick -> alert latency: p50/p99 from the processor's histogram
  ``mw_processor_tick_to_alert_seconds`` (interpolated inside its buckets, like PromQL's
  ``histogram_quantile``), and exact p50/p99/max from the `alerts` topic (each alert's Kafka
  timestamp minus the time its tick was produced);
- loss and duplicates: ``count(*)`` of `prices` == ticks acknowledged by Kafka, and
  ``count(*) == count(DISTINCT (symbol, ts))``; dead letters (expected 0).

Exit code 0 when nothing was lost or duplicated, 1 otherwise. A last line ``RESULT {json}`` holds
every number for scripts.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import psutil
from aiokafka import AIOKafkaConsumer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from mw_core.adapters import bus
from mw_core.adapters.postgres.pool import create_pool
from mw_core.adapters.postgres.schema import apply_schema
from mw_core.config import Settings, load_settings
from mw_core.local.ports import free_port
from mw_core.local.runtime import ensure_infra
from mw_core.markets import codec
from mw_core.models import Tick
from mw_core.processor.benchmark import _percentile

MB = 2**20
HISTOGRAM = "mw_processor_tick_to_alert_seconds"
JUMP_EVERY_S = 2.0
JUMP = 0.06
WARMUP_S = 120.0  # windows full (900 s of event time at 10x) plus margin


def out(line: str = "") -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


# --- memory ---------------------------------------------------------------------------------------
def tree_memory(pid: int | None, *, children: bool = True) -> tuple[float, float]:
    """(RSS, PSS) in MiB of `pid` (and all its descendants); (0, 0) when it is gone."""
    if pid is None:
        return 0.0, 0.0
    try:
        root = psutil.Process(pid)
        procs = [root, *(root.children(recursive=True) if children else ())]
    except psutil.Error:
        return 0.0, 0.0
    rss = pss = 0
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            info = proc.memory_full_info()
            rss += info.rss
            pss += info.pss
    return rss / MB, pss / MB


@dataclass
class Sample:
    t: float
    produced: int
    stored: int
    memory: dict[str, tuple[float, float]]


# --- the producer ---------------------------------------------------------------------------------
@dataclass
class Producer:
    """Steady-rate producer of 1-second random walks; remembers when each event second was sent."""

    settings: Settings
    symbols: int
    rate: float
    seconds: float
    seed: int = 7
    sent: int = 0
    acked: int = 0
    sent_at: dict[int, float] = field(default_factory=dict)  # event ts -> wall time of its send
    behind_max_s: float = 0.0
    t0_ms: int = 0

    async def run(self, stop: asyncio.Event) -> None:
        rng = random.Random(self.seed)
        names = [f"S{i:04d}USDT" for i in range(self.symbols)]
        prices = [rng.uniform(1, 1000) for _ in names]
        step_s = self.symbols / self.rate  # wall seconds per event second
        steps = int(self.seconds / step_s)
        # Event time: one second per step, ending about now (ticks from the future are rejected).
        self.t0_ms = int(time.time() * 1000) - steps * 1000
        producer = bus.producer(self.settings, linger_ms=5, max_batch_size=512 * 1024)
        await producer.start()
        next_jump = 0.0
        started = time.monotonic()
        pending: list[asyncio.Future[Any]] = []
        try:
            for step in range(steps):
                if stop.is_set():
                    break
                target = started + step * step_s
                delay = target - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                else:
                    self.behind_max_s = max(self.behind_max_s, -delay)
                ts = self.t0_ms + step * 1000
                jumper = -1
                if time.monotonic() - started >= next_jump:
                    jumper = rng.randrange(self.symbols)
                    next_jump += JUMP_EVERY_S
                self.sent_at[ts] = time.time()
                futures = []
                for i, name in enumerate(names):
                    prices[i] *= math.exp(rng.gauss(0, 0.0004))
                    if i == jumper:
                        prices[i] *= 1 + JUMP
                    key, value = codec.encode_tick(Tick(name, ts, round(prices[i], 6), source="soak"))
                    futures.append(await producer.send(self.settings.topic_prices, value, key=key))
                self.sent += len(futures)
                # Count the previous step's acknowledgements (they had a whole step to arrive).
                await self._count(pending)
                pending = futures
            await self._count(pending)
            await producer.flush()
        finally:
            await producer.stop()

    async def _count(self, futures: list[asyncio.Future[Any]]) -> None:
        results = await asyncio.gather(*futures, return_exceptions=True)
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed:
            raise RuntimeError(f"{len(failed)} sends failed, first: {failed[0]!r}")
        self.acked += len(results)


# --- the processor child --------------------------------------------------------------------------
class ProcessorChild:
    def __init__(self, settings: Settings, workdir: Path) -> None:
        assert settings.database_url is not None and settings.kafka_bootstrap is not None
        self.port = free_port()
        self.log = workdir / "process.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("MW_")}
        env.update(
            MW_DATABASE_URL=settings.database_url.get_secret_value(),
            MW_KAFKA_BOOTSTRAP=settings.kafka_bootstrap,
            MW_STATE_DIR=str(workdir),
            MW_METRICS_PORT=str(self.port),
            MW_PRICES_PARTITIONS=str(settings.prices_partitions),
            MW_TOPIC_PRICES=settings.topic_prices,
            MW_TOPIC_ALERTS=settings.topic_alerts,
            MW_TOPIC_DLQ=settings.topic_dlq,
            MW_TOPIC_NEWS=settings.topic_news,
            MW_CONSUMER_GROUP=settings.consumer_group,
            MW_RSS_FEEDS="none",
            MW_LLM_PROVIDER="template",
            MW_LOG_LEVEL="WARNING",
            PYTHONUNBUFFERED="1",
        )
        with open(self.log, "ab") as log_file:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "mw_core.cli", "process"],
                env=env,
                cwd=workdir,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    async def get(self, path: str) -> httpx.Response | None:
        try:
            async with httpx.AsyncClient(timeout=5.0) as client:
                return await client.get(f"http://127.0.0.1:{self.port}{path}")
        except httpx.HTTPError:
            return None

    async def health(self) -> dict[str, Any] | None:
        resp = await self.get("/healthz")
        return None if resp is None else resp.json()  # type: ignore[no-any-return]

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        return int(self.proc.returncode)

    def tail(self, lines: int = 30) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


# --- latency --------------------------------------------------------------------------------------
def histogram_quantiles(metrics_text: str, qs: tuple[float, ...]) -> tuple[int, dict[float, float | None]]:
    """(observations, {q: seconds}) of the tick -> alert histogram, interpolated in its buckets."""
    buckets: list[tuple[float, float]] = []
    for family in text_string_to_metric_families(metrics_text):
        if family.name != HISTOGRAM:
            continue
        for s in family.samples:
            if s.name == f"{HISTOGRAM}_bucket":
                buckets.append((float(s.labels["le"]), float(s.value)))
    buckets.sort()
    total = buckets[-1][1] if buckets else 0.0
    result: dict[float, float | None] = {}
    for q in qs:
        if total == 0:
            result[q] = None
            continue
        rank = q * total
        lower_bound, lower_count = 0.0, 0.0
        for bound, count in buckets:
            if count >= rank:
                if math.isinf(bound):
                    result[q] = lower_bound  # beyond the last finite bucket: report its bound
                else:
                    width = count - lower_count
                    frac = (rank - lower_count) / width if width else 1.0
                    result[q] = lower_bound + (bound - lower_bound) * frac
                break
            lower_bound, lower_count = bound, count
    return int(total), result


async def alert_latencies(settings: Settings, sent_at: dict[int, float]) -> list[float]:
    """Seconds from each alerted tick's send to its alert's Kafka timestamp (the alerts topic).

    Only the alerts a person receives count: episode ``open`` and ``escalate`` events, whose ``ts``
    is the breaching tick's. A ``close`` is stamped ``last breach + quiet period``, not a tick that
    caused it (the processor's histogram leaves it out too).
    """
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap, group_id=None, enable_auto_commit=False
    )
    await consumer.start()
    latencies: list[float] = []
    try:
        await consumer.topics()
        tps = [
            TopicPartition(settings.topic_alerts, p)
            for p in sorted(consumer.partitions_for_topic(settings.topic_alerts) or ())
        ]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500, max_records=10_000)
            for records in batch.values():
                for rec in records:
                    alert = orjson.loads(rec.value)  # type: ignore[arg-type]
                    if alert.get("kind") not in ("open", "escalate"):
                        continue
                    sent = sent_at.get(int(alert["ts"]))
                    if sent is not None:
                        latencies.append(max(0.0, rec.timestamp / 1000 - sent))
            marks = [(consumer.highwater(tp), await consumer.position(tp)) for tp in tps]
            if not batch and all(hw is not None and pos >= hw for hw, pos in marks):
                break
    finally:
        await consumer.stop()
    return latencies


# --- the run --------------------------------------------------------------------------------------
def fmt_ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.1f} ms"


async def soak(settings: Settings, args: argparse.Namespace, infra_pids: dict[str, int | None]) -> int:
    assert settings.database_url is not None
    url = settings.database_url.get_secret_value()
    pool = await create_pool(url, min_size=1, max_size=2)
    await apply_schema(pool)
    await bus.ensure_topics(settings)
    workdir = Path(settings.state_dir)
    child = ProcessorChild(settings, workdir)
    pids = {"processor": child.pid, **infra_pids, "producer": os.getpid()}
    started = time.monotonic()
    failures: list[str] = []
    try:
        while (await child.health()) is None:
            if child.proc.poll() is not None or time.monotonic() - started > 60:
                raise RuntimeError(f"`mw process` did not start:\n{child.tail()}")
            await asyncio.sleep(0.2)
        out(
            f"processor pid {child.pid} on :{child.port}; broker pid {pids['broker']}; postgres pid {pids['postgres']}"
        )
        out(
            f"producing {args.rate:,.0f} ticks/s for {args.symbols} symbols for {args.seconds:.0f} s "
            f"(event time x{args.rate / args.symbols:.0f}); sampling every {args.sample_every:.0f} s"
        )
        names = ("processor", "broker", "postgres", "producer")
        out(
            f"{'t (s)':>6} {'sent':>10} {'stored':>10} {'lag':>7}  "
            + "  ".join(f"{n + ' RSS/PSS MiB':>24}" for n in names)
        )
        samples: list[Sample] = []

        async def sample(t: float, sent: int) -> None:
            health = await child.health() or {}
            stored = int(health.get("stored", 0))
            # This process is measured alone: the broker and the processor are its children.
            memory = {name: tree_memory(pid, children=name != "producer") for name, pid in pids.items()}
            samples.append(Sample(t, sent, stored, memory))
            out(
                f"{t:6.0f} {sent:10,} {stored:10,} {sent - stored:7,}  "
                + "  ".join(f"{memory[n][0]:11.1f} /{memory[n][1]:10.1f}" for n in names)
            )

        producer = Producer(settings, args.symbols, args.rate, args.seconds)
        stop = asyncio.Event()
        t_start = time.monotonic()
        await sample(0.0, 0)
        task = asyncio.create_task(producer.run(stop))
        next_sample = args.sample_every
        while not task.done():
            await asyncio.wait({task}, timeout=max(0.0, t_start + next_sample - time.monotonic()))
            if child.proc.poll() is not None:
                stop.set()
                failures.append(f"`mw process` exited with {child.proc.returncode}")
                break
            if time.monotonic() - t_start >= next_sample and not task.done():
                await sample(next_sample, producer.sent)
                next_sample += args.sample_every
        await task
        produce_s = time.monotonic() - t_start
        produced = producer.acked

        # Drain: wait until every acknowledged tick is durable.
        drain_started = time.monotonic()
        stored = 0
        while time.monotonic() - drain_started < 120:
            stored = int(await pool.fetchval("SELECT count(*) FROM prices"))
            if stored >= produced or child.proc.poll() is not None:
                break
            await asyncio.sleep(0.5)
        drain_s = time.monotonic() - drain_started
        await asyncio.sleep(1.0)  # the last batch's alerts are published after its write
        await sample(time.monotonic() - t_start, produced)

        row = await pool.fetchrow("SELECT count(*) AS n, count(DISTINCT (symbol, ts)) AS d FROM prices")
        rows, distinct = int(row["n"]), int(row["d"])
        anomalies = int(await pool.fetchval("SELECT count(*) FROM anomalies"))
        health = await child.health() or {}
        metrics = await child.get("/metrics")
        observed, hist = histogram_quantiles(metrics.text if metrics else "", (0.5, 0.99))
        exact = await alert_latencies(settings, producer.sent_at)
    finally:
        rc = child.stop()
        await pool.close()

    lost, dups = produced - rows, rows - distinct
    if lost:
        failures.append(f"{lost} acknowledged ticks are not in `prices`")
    if dups:
        failures.append(f"{dups} duplicate (symbol, ts) rows")
    if health.get("dead_letters"):
        failures.append(f"{health['dead_letters']} dead letters")
    if rc != 0:
        failures.append(f"`mw process` exited with {rc} on SIGTERM")

    first, last = samples[0], samples[-1]
    warm = next((s for s in samples if s.t >= WARMUP_S), None)
    out()
    out(
        f"produced {produced:,} ticks in {produce_s:.1f} s = {produced / produce_s:,.0f} ticks/s (max {producer.behind_max_s * 1000:.0f} ms behind schedule)"
    )
    out(f"drained in {drain_s:.1f} s after the last tick")
    out(f"stored rows {rows:,}, distinct (symbol, ts) {distinct:,}: lost {lost}, duplicates {dups}")
    out(
        f"dead letters {health.get('dead_letters')}, anomalies {anomalies:,}, alerts published {health.get('alerts')}"
    )
    out(
        f"tick -> alert latency, processor histogram ({observed:,} alerts): "
        f"p50 {fmt_ms(hist[0.5])}, p99 {fmt_ms(hist[0.99])}"
    )
    out(
        f"tick -> alert latency, alerts topic ({len(exact):,} alerts): p50 {fmt_ms(_percentile(exact, 0.5))}, "
        f"p99 {fmt_ms(_percentile(exact, 0.99))}, max {fmt_ms(max(exact) if exact else None)}"
    )
    out()
    out(
        f"{'component':<10} {'RSS start':>10} {'RSS warm':>10} {'RSS end':>10} {'PSS start':>10} {'PSS end':>10}  growth after warm-up"
    )
    memory_summary: dict[str, Any] = {}
    for name in ("processor", "broker", "postgres", "producer"):
        rs, ps = first.memory[name]
        re_, pe = last.memory[name]
        rw = warm.memory[name][0] if warm else float("nan")
        growth = (re_ - rw) / max(1e-9, (last.t - warm.t) / 60) if warm and last.t > warm.t else float("nan")
        out(
            f"{name:<10} {rs:10.1f} {rw:10.1f} {re_:10.1f} {ps:10.1f} {pe:10.1f}  {re_ - rw:+.1f} MiB ({growth:+.2f} MiB/min)"
        )
        memory_summary[name] = {
            "rss_start_mb": round(rs, 1),
            "rss_warm_mb": round(rw, 1),
            "rss_end_mb": round(re_, 1),
            "pss_start_mb": round(ps, 1),
            "pss_end_mb": round(pe, 1),
            "rss_growth_after_warmup_mb_per_min": round(growth, 2),
        }
    out()
    out("OK: no loss, no duplicates" if not failures else "FAILED: " + "; ".join(failures))
    result = {
        "seconds": args.seconds,
        "rate": args.rate,
        "symbols": args.symbols,
        "produced": produced,
        "ticks_per_s": round(produced / produce_s),
        "behind_schedule_max_ms": round(producer.behind_max_s * 1000),
        "drain_s": round(drain_s, 1),
        "stored_rows": rows,
        "distinct_rows": distinct,
        "lost": lost,
        "duplicates": dups,
        "dead_letters": health.get("dead_letters"),
        "anomalies": anomalies,
        "alerts": health.get("alerts"),
        "latency_hist_p50_ms": None if hist[0.5] is None else round(hist[0.5] * 1000, 1),
        "latency_hist_p99_ms": None if hist[0.99] is None else round(hist[0.99] * 1000, 1),
        "latency_exact_p50_ms": None if not exact else round(_percentile(exact, 0.5) * 1000, 1),  # type: ignore[operator]
        "latency_exact_p99_ms": None if not exact else round(_percentile(exact, 0.99) * 1000, 1),  # type: ignore[operator]
        "latency_exact_max_ms": None if not exact else round(max(exact) * 1000, 1),
        "memory": memory_summary,
        "samples": [
            {
                "t": round(s.t),
                "sent": s.produced,
                "stored": s.stored,
                **{k: round(v[0], 1) for k, v in s.memory.items()},
            }
            for s in samples
        ],
        "failures": failures,
    }
    out("RESULT " + orjson.dumps(result).decode())
    return 1 if failures else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=600.0, help="how long to produce (default 600)")
    parser.add_argument("--rate", type=float, default=5000.0, help="ticks per second (default 5000)")
    parser.add_argument("--symbols", type=int, default=500, help="distinct symbols (default 500)")
    parser.add_argument(
        "--sample-every", type=float, default=30.0, help="memory sample period, s (default 30)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary state directory")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("mw_core.local.broker").setLevel(logging.ERROR)  # the memory-only warning

    state = Path(tempfile.mkdtemp(prefix="mw-soak-"))
    out(f"Market Watch soak, {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}, state in {state}")
    out(
        f"machine: {os.cpu_count()} CPUs, {psutil.virtual_memory().total / 2**30:.0f} GiB RAM, load average {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f}"
    )
    # Always the embedded servers: the memory numbers describe them.
    settings = load_settings(_env_file=None, state_dir=state, database_url=None, kafka_bootstrap=None)
    infra = ensure_infra(settings, stop_postgres=True)
    try:
        assert infra.postgres is not None and infra.broker is not None
        pids = {"broker": infra.broker.pid, "postgres": infra.postgres.pid()}
        return asyncio.run(soak(infra.settings, args, pids))
    finally:
        infra.close()
        out(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        if not args.keep:
            shutil.rmtree(state, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
