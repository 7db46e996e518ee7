"""Benchmark of the notifier: alert event on the `alerts` topic -> channels, with local receivers.

Run: ``python bench/notify.py [--latency-events N] [--burst-events N] [--json]``

Three channels, each a local HTTP receiver on 127.0.0.1: our signed webhook, Apprise ``json://``
and Apprise ``ntfy://``. The real `NotifyService` consumes a fresh alerts topic (own consumer
group) and records every attempt in `notification_deliveries`.

Prints (numbers for the README, not a timed assertion):
- latency: N events produced one at a time (10 per second, below the rate limit), from the
  produce call to the first channel's receiver having the request; p50 / p99 / max, and the
  same to the last of the three channels. Target: p99 < 2 s.
- burst: N events produced at once, delivered to the 3 channels under the configured rate limit
  (burst, then steady rate). Lost = (event, channel) pairs never received; duplicated = received
  more than once (by Idempotency-Key for the webhook, by body for Apprise channels); rate
  compliance = the largest excess, over every interval of every channel, of requests beyond
  ``burst + rate x interval`` (<= 0 within limits; arrival-time jitter allows one request);
  plus one `delivered` row per pair in the table.

PostgreSQL and Kafka: ``MW_DATABASE_URL`` / ``MW_KAFKA_BOOTSTRAP`` when set, otherwise embedded
servers in a temporary state directory.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import math
import os
import tempfile
import threading
import time
import uuid
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import orjson

from mw_core.adapters import bus
from mw_core.adapters.postgres.pool import create_pool
from mw_core.config import Settings, load_settings
from mw_core.local.runtime import ensure_infra
from mw_core.notify.service import NotifyService

SECRET = "bench-webhook-secret"  # noqa: S105 - HMAC key of a local receiver, bench only
RATE_PER_MIN = 1200.0  # defaults of --rate-per-min / --burst: low enough that the limit binds
BURST = 50
# Requests are timed on arrival at the receiver, not at send: one request of tolerance absorbs the
# transport's jitter (a request sent earlier arriving a few ms later shortens an interval).
JITTER_REQUESTS = 1.0


class Receiver:
    """Answers 200 to every POST; records (arrival perf_counter, identity) per request."""

    def __init__(self, *, by_key: bool) -> None:
        self.by_key = by_key
        self.arrivals: list[tuple[float, str, bytes]] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                at = time.perf_counter()
                key = self.headers.get("Idempotency-Key") if receiver.by_key else None
                with receiver._lock:
                    receiver.arrivals.append((at, key or hashlib.sha256(body).hexdigest(), body))
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, format: str, *args: Any) -> None:
                return

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def reset(self) -> None:
        with self._lock:
            self.arrivals.clear()


def event(episode_id: str, seq: int) -> bytes:
    """One `alerts` record: an episode event, distinct per seq (time, price, move)."""
    ts = 1_722_816_000_000 + seq * 60_000
    ret = -0.031 - seq / 100_000
    return orjson.dumps(
        {
            "type": "episode",
            "kind": "open" if seq == 1 else "escalate",
            "episode_id": episode_id,
            "seq": seq,
            "symbol": "BTCUSDT",
            "ts": ts,
            "window_s": 300,
            "ret": ret,
            "direction": "down",
            "price": 58_000.0 + seq,
            "threshold": 0.03,
            "summary": "",
        }
    )


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def max_rate_excess(times: list[float], *, rate_per_s: float, burst: int) -> float:
    """Largest (requests in [t_i, t_j]) - (burst + rate x (t_j - t_i)) over all i <= j."""
    times = sorted(times)
    worst = float("-inf")
    for i, start in enumerate(times):
        for j in range(i, len(times)):
            worst = max(worst, (j - i + 1) - (burst + rate_per_s * (times[j] - start)))
    return worst


async def produce(settings: Settings, values: list[bytes], *, spacing_s: float = 0.0) -> dict[bytes, float]:
    """Send each value; returns value -> perf_counter just before its send."""
    producer = bus.producer(settings, linger_ms=0)
    await producer.start()
    sent: dict[bytes, float] = {}
    try:
        for value in values:
            sent[value] = time.perf_counter()
            if spacing_s:
                await producer.send_and_wait(settings.topic_alerts, value, key=b"BTCUSDT")
                await asyncio.sleep(spacing_s)
            else:
                await producer.send(settings.topic_alerts, value, key=b"BTCUSDT")
        await producer.flush()
    finally:
        await producer.stop()
    return sent


async def until(predicate: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("bench: deliveries did not complete in time")
        await asyncio.sleep(0.02)


async def bench(
    settings: Settings, receivers: list[Receiver], *, latency_n: int, burst_n: int
) -> dict[str, Any]:
    service = NotifyService(settings)
    await service.start()
    task = asyncio.create_task(service.run())
    out: dict[str, Any] = {
        "channels": [ch.name for ch in service.channels],
        "rate_per_min": settings.notify_rate_per_min,
        "burst": settings.notify_burst,
    }
    try:
        # --- latency: one event at a time --------------------------------------------------------
        eid = f"BTCUSDT-{uuid.uuid4().int % 10**12}"
        values = [event(eid, s) for s in range(1, latency_n + 1)]
        sent = await produce(settings, values, spacing_s=0.1)
        await until(lambda: all(len(r.arrivals) >= latency_n for r in receivers), 120)
        first: list[float] = []
        last: list[float] = []
        for s, value in enumerate(values):
            # Each channel delivers in order, one event per 100 ms: its s-th arrival is event s.
            seq_at = [r.arrivals[s][0] for r in receivers]
            first.append((min(seq_at) - sent[value]) * 1000)
            last.append((max(seq_at) - sent[value]) * 1000)
        out["latency_first_channel_ms"] = _dist(first)
        out["latency_all_channels_ms"] = _dist(last)
        for r in receivers:
            r.reset()

        # --- burst: N events at once to 3 channels ------------------------------------------------
        eid = f"BTCUSDT-{uuid.uuid4().int % 10**12}"
        values = [event(eid, s) for s in range(1, burst_n + 1)]
        started = time.perf_counter()
        await produce(settings, values)
        await until(lambda: all(len(r.arrivals) >= burst_n for r in receivers), 600)
        await asyncio.sleep(1.0)  # anything duplicated would arrive now
        out["burst_seconds"] = round(time.perf_counter() - started, 2)
        per_channel = []
        rate_per_s = settings.notify_rate_per_min / 60
        burst = settings.notify_burst
        worst = {
            r.port: max_rate_excess([at for at, _, _ in r.arrivals], rate_per_s=rate_per_s, burst=burst)
            for r in receivers
        }
        for r in receivers:
            ids = Counter(ident for _, ident, _ in r.arrivals)
            per_channel.append(
                {
                    "received": len(r.arrivals),
                    "lost": burst_n - len(ids),
                    "duplicated": sum(n - 1 for n in ids.values()),
                    "max_excess": round(worst[r.port], 2),
                    "over_limit": max(0, math.ceil(worst[r.port] - JITTER_REQUESTS - 1e-9)),
                }
            )
        out["burst_per_channel"] = per_channel
        out["burst_events"] = burst_n
        assert settings.database_url is not None
        pool = await create_pool(settings.database_url.get_secret_value(), max_size=1)
        try:
            counts = await pool.fetch(
                "SELECT idempotency_key, count(*) AS n FROM notification_deliveries "
                "WHERE status = 'delivered' AND event_key LIKE $1 GROUP BY idempotency_key",
                eid + "/%",
            )
        finally:
            await pool.close()
        out["delivered_rows"] = len(counts)
        out["keys_with_more_than_one_delivered_row"] = sum(1 for r in counts if r["n"] > 1)
    finally:
        service.stop()
        await task
    return out


def _dist(ms: list[float]) -> dict[str, float]:
    return {
        "n": len(ms),
        "p50": round(percentile(ms, 0.5), 1),
        "p99": round(percentile(ms, 0.99), 1),
        "max": round(max(ms), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency-events", type=int, default=200)
    parser.add_argument("--burst-events", type=int, default=1000)
    parser.add_argument("--rate-per-min", type=float, default=RATE_PER_MIN, help="per channel")
    parser.add_argument("--burst", type=int, default=BURST, help="per channel")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    hook, json_r, ntfy_r = Receiver(by_key=True), Receiver(by_key=False), Receiver(by_key=False)
    receivers = [json_r, ntfy_r, hook]  # the channels' order: MW_NOTIFY_URLS, then the webhook
    suffix = uuid.uuid4().hex[:8]
    with tempfile.TemporaryDirectory(prefix="mw-bench-notify-") as tmp:
        settings = load_settings(
            state_dir=Path(os.environ.get("MW_STATE_DIR") or tmp),
            topic_alerts=f"bench-alerts-{suffix}",
            topic_dlq=f"bench-dlq-{suffix}",
            notify_group=f"bench-notify-{suffix}",
            webhook_url=f"http://127.0.0.1:{hook.port}/mw",
            webhook_secret=SECRET,
            notify_urls=f"json://127.0.0.1:{json_r.port}/alerts,ntfy://127.0.0.1:{ntfy_r.port}/mw",
            notify_rate_per_min=args.rate_per_min,
            notify_burst=args.burst,
            batch_timeout_ms=20,
            log_level="WARNING",
        )
        infra = ensure_infra(settings, stop_postgres=True)
        try:
            result = asyncio.run(
                bench(infra.settings, receivers, latency_n=args.latency_events, burst_n=args.burst_events)
            )
        finally:
            infra.close()
            for r in receivers:
                r.stop()
    if args.json:
        print(json.dumps(result))
        return
    lat, lat_all = result["latency_first_channel_ms"], result["latency_all_channels_ms"]
    print(f"channels: {', '.join(result['channels'])}")
    print(
        f"latency event -> first channel ({lat['n']} events): p50 {lat['p50']} ms, p99 {lat['p99']} ms, max {lat['max']} ms"
    )
    print(f"latency event -> all 3 channels: p50 {lat_all['p50']} ms, p99 {lat_all['p99']} ms")
    print(
        f"burst {result['burst_events']} events x 3 channels in {result['burst_seconds']} s "
        f"(limit: burst {result['burst']}, then {result['rate_per_min']:.0f}/min per channel)"
    )
    for name, ch in zip(result["channels"], result["burst_per_channel"], strict=True):
        print(
            f"  {name}: received {ch['received']}, lost {ch['lost']}, duplicated {ch['duplicated']}, max excess over burst + rate x interval {ch['max_excess']} requests, over the limit {ch['over_limit']}"
        )
    print(
        f"delivered rows {result['delivered_rows']}, keys with >1 delivered row "
        f"{result['keys_with_more_than_one_delivered_row']}"
    )


if __name__ == "__main__":
    main()
