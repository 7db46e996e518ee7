"""Hostile and absurd input on `prices`: everything bad ends in `dlq` with a reason, nothing else.

- 10,000 malformed records (broken JSON, wrong types, missing fields, tombstones, bad keys, a
  1 MB blob, 100,000-deep nesting) shuffled into 10,000 valid ticks.
- Absurd market data for real symbols in the middle of their streams (price 0 / negative / NaN /
  inf / 1e30, timestamps from 1970, in seconds or microseconds, next year; symbols such as '',
  'btc', '<script>', 'A' * 100): rejected with the right reason, never stored, never alerting.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from mw_core.config import Settings
from mw_core.markets import codec
from mw_core.models import Tick
from tests.chaos.support import (
    T0,
    ProcessorProcess,
    anomaly_keys,
    fetchval,
    produce_records,
    read_topic,
    stored_ticks,
    wait_for,
    with_schema,
)

pytestmark = pytest.mark.chaos

Record = tuple[bytes | None, bytes | None]


def _j(obj: object) -> bytes:
    return orjson.dumps(obj)


def malformed(rng: random.Random, n: int) -> list[tuple[Record, str]]:
    """`n` bad records with the reason each must be dead-lettered with."""
    ts = T0 + 500_000
    k = b"BADUSDT"
    makers: list[tuple[str, Callable[[int], Record]]] = [
        ("malformed_json", lambda i: (k, b'{"symbol": "BADUSDT", "price": 1, "ts": ' + str(i).encode())),
        ("malformed_json", lambda i: (k, b"{not json " + str(i).encode())),
        ("malformed_json", lambda i: (None, b"\xff\xfe\x00\x01 garbage " + str(i).encode())),
        ("malformed_json", lambda i: (k, b'{"symbol": "BADUSDT", "price": NaN, "ts": %d}' % (ts + i))),
        ("malformed_json", lambda i: (k, b'{"symbol": "BADUSDT", "price": 1e400, "ts": %d}' % (ts + i))),
        ("malformed_json", lambda i: (k, b"")),
        ("not_an_object", lambda i: (k, _j([i, 2, 3]))),
        ("not_an_object", lambda i: (k, _j(i))),
        ("not_an_object", lambda i: (k, _j(f"string {i}"))),
        ("not_an_object", lambda i: (k, b"null")),
        ("empty", lambda i: (k, None)),
        ("missing_field", lambda i: (k, _j({"symbol": "BADUSDT", "ts": ts + i}))),
        ("missing_field", lambda i: (k, _j({"symbol": "BADUSDT", "price": 1.0 + i}))),
        ("missing_field", lambda i: (None, _j({"price": 1.0 + i, "ts": ts}))),
        ("bad_price", lambda i: (k, _j({"symbol": "BADUSDT", "price": f"abc{i}", "ts": ts}))),
        ("bad_price", lambda i: (k, _j({"symbol": "BADUSDT", "price": [i], "ts": ts}))),
        ("bad_price", lambda i: (k, _j({"symbol": "BADUSDT", "price": True, "ts": ts + i}))),
        ("bad_price", lambda i: (k, _j({"symbol": "BADUSDT", "price": {"v": i}, "ts": ts}))),
        ("bad_price", lambda i: (k, _j({"symbol": "BADUSDT", "price": -1.0 - i, "ts": ts}))),
        ("bad_ts", lambda i: (k, _j({"symbol": "BADUSDT", "price": 1.0, "ts": f"yesterday {i}"}))),
        ("bad_ts", lambda i: (k, _j({"symbol": "BADUSDT", "price": 1.0 + i, "ts": None}))),
        ("bad_ts", lambda i: (k, _j({"symbol": "BADUSDT", "price": 1.0, "ts": [ts, i]}))),
        ("bad_ts", lambda i: (k, _j({"symbol": "BADUSDT", "price": 1.0, "ts": i}))),
        ("bad_symbol", lambda i: (k, _j({"symbol": f"bad sym {i}", "price": 1.0, "ts": ts}))),
        ("bad_symbol", lambda i: (b"\xff\xfe%d" % i, _j({"price": 1.0, "ts": ts}))),
        ("bad_symbol", lambda i: (k, _j({"symbol": i, "price": 1.0, "ts": ts}))),
    ]
    # Heavy ones once each: 100,000-deep nesting and a 1 MB blob.
    out: list[tuple[Record, str]] = [
        ((k, b"[" * 100_000), "malformed_json"),
        ((k, b"\x00" * 1_000_000), "malformed_json"),
    ]
    out += [(make(i), reason) for i, (reason, make) in enumerate(makers)]
    while len(out) < n:
        reason, make = makers[rng.randrange(len(makers))]
        out.append((make(len(out)), reason))
    return out


def walk(symbol: str, n: int, start: float) -> list[Tick]:
    out, price = [], start
    for i in range(n):
        price *= 1.0005 if i % 2 else 0.9995
        out.append(Tick(symbol, T0 + i * 1000, round(price, 6), source="replay"))
    return out


def shuffle_in(rng: random.Random, good: list[Tick], bad: list[Record]) -> list[Record]:
    """Interleave at random, keeping the valid ticks in order."""
    tags = [True] * len(good) + [False] * len(bad)
    rng.shuffle(tags)
    goods, bads = iter(good), iter(bad)
    return [codec.encode_tick(next(goods)) if tag else next(bads) for tag in tags]


async def _run_until(
    proc: ProcessorProcess, url: str, *, stored: int, dead: int, timeout: float
) -> dict[str, object]:
    async def done() -> dict[str, object] | None:
        health = await proc.health()
        if health is None or health[1]["dead_letters"] < dead:
            return None
        if await fetchval(url, "SELECT count(*) FROM prices") < stored:
            return None
        return health[1]

    health: dict[str, object] = await wait_for(
        done, timeout=timeout, interval=0.2, what=f"{stored} stored + {dead} dead letters"
    )
    return health


def _dlq_metrics(text: str) -> Counter[str]:
    out: Counter[str] = Counter()
    for line in text.splitlines():
        if line.startswith("mw_processor_dlq_total{"):
            reason = line.split('reason="', 1)[1].split('"', 1)[0]
            out[reason] += int(float(line.rsplit(" ", 1)[1]))
    return out


@pytest.mark.timeout(120)
async def test_ten_thousand_malformed_records_all_dead_lettered_with_reasons(
    make_settings: Callable[..., Settings], tmp_path: Path, chaos_record: Callable[..., None]
) -> None:
    rng = random.Random(4242)
    settings, url = await with_schema(make_settings, prices_partitions=3)
    good = [t for s in ("MXAUSDT", "MXBUSDT", "MXCUSDT", "MXDUSDT") for t in walk(s, 2_500, 50.0)]
    bad = malformed(rng, 10_000)
    expected = Counter(reason for _, reason in bad)
    records = shuffle_in(rng, good, [r for r, _ in bad])
    proc = ProcessorProcess(settings, tmp_path).start()
    try:
        started = time.monotonic()
        await produce_records(settings, records)
        health = await _run_until(proc, url, stored=len(good), dead=len(bad), timeout=90)
        elapsed = time.monotonic() - started
        status, _ = await proc.health() or (None, None)
        assert proc.alive() and status == 200
        metrics = _dlq_metrics(await proc.metrics_text())
    finally:
        rc = proc.stop()

    dlq = await read_topic(settings, settings.topic_dlq, timeout=60)
    reasons = Counter(d["reason"] for d in dlq)
    chaos_record(
        valid=len(good),
        malformed=len(bad),
        dead_letters=len(dlq),
        by_reason=dict(sorted(reasons.items())),
        seconds=round(elapsed, 1),
        exit_code=rc,
    )
    assert len(dlq) == len(bad) == health["dead_letters"]
    assert reasons == expected
    assert metrics == expected
    assert all(d["source"] == settings.topic_prices and d["detail"] for d in dlq)
    stored = await stored_ticks(url)
    assert sorted(stored) == sorted((t.symbol, t.ts, t.price) for t in good)
    assert rc == 0


def absurd(now_ms: int) -> list[tuple[Record, str]]:
    """Absurd ticks for BTCUSDT/ETHUSDT (in the middle of their streams) and absurd symbols."""
    ts = T0 + 300_500  # between two valid ticks: accepted, it would be in order
    btc, year_ms = b"BTCUSDT", 365 * 24 * 3600 * 1000

    def tick(price: object = 60_000.0, t: object = ts, symbol: object = "BTCUSDT") -> bytes:
        return orjson.dumps({"symbol": symbol, "price": price, "ts": t})

    cases: list[tuple[Record, str]] = [
        ((btc, tick(0)), "bad_price"),
        ((btc, tick(0.0, ts + 1)), "bad_price"),
        ((btc, tick(-0.0, ts + 2)), "bad_price"),
        ((btc, tick(-60_000.0)), "bad_price"),
        ((btc, tick("NaN")), "bad_price"),
        ((btc, tick("nan", ts + 3)), "bad_price"),
        ((btc, tick("Infinity")), "bad_price"),
        ((btc, tick("-Infinity")), "bad_price"),
        ((btc, tick(1e30)), "bad_price"),
        ((btc, tick("1e30", ts + 4)), "bad_price"),
        ((btc, tick(1.7976931348623157e308)), "bad_price"),
        ((btc, b'{"symbol": "BTCUSDT", "price": NaN, "ts": %d}' % ts), "malformed_json"),
        ((btc, b'{"symbol": "BTCUSDT", "price": Infinity, "ts": %d}' % ts), "malformed_json"),
        ((btc, b'{"symbol": "BTCUSDT", "price": 1e400, "ts": %d}' % ts), "malformed_json"),
        ((btc, tick(t=0)), "bad_ts"),
        ((btc, tick(t=1000)), "bad_ts"),
        ((btc, tick(t=-1)), "bad_ts"),
        ((btc, tick(t=T0 // 1000)), "bad_ts"),  # seconds instead of milliseconds (1970)
        ((btc, tick(t=T0 * 1000)), "bad_ts"),  # microseconds
        ((btc, tick(t=now_ms + year_ms)), "bad_ts"),  # next year
        ((btc, tick(t=now_ms + 2 * 24 * 3600 * 1000)), "bad_ts"),
        ((btc, tick(symbol="")), "bad_symbol"),
        ((btc, tick(symbol="btc")), "bad_symbol"),
        ((btc, tick(symbol="btcusdt")), "bad_symbol"),
        ((btc, tick(symbol="<script>alert(1)</script>")), "bad_symbol"),
        ((btc, tick(symbol="A" * 100)), "bad_symbol"),
        ((btc, tick(symbol="BTC USDT")), "bad_symbol"),
        ((btc, tick(symbol="BTC-USDT")), "bad_symbol"),
        ((btc, tick(symbol="ＢＴＣＵＳＤＴ")), "bad_symbol"),  # full-width letters
        ((btc, tick(symbol="BTCUSDT\n")), "bad_symbol"),
        ((btc, tick(symbol="BTCUSDT'; DROP TABLE prices; --")), "bad_symbol"),
        ((btc, tick(symbol="B")), "bad_symbol"),
        ((b"btc", orjson.dumps({"price": 60_000.0, "ts": ts})), "bad_symbol"),
        ((b"ETHUSDT", tick(1e30, symbol="ETHUSDT")), "bad_price"),
        ((b"ETHUSDT", tick(-3000.0, symbol="ETHUSDT")), "bad_price"),
        ((b"ETHUSDT", tick(t=0, symbol="ETHUSDT")), "bad_ts"),
    ]
    return cases


@pytest.mark.timeout(90)
async def test_absurd_market_data_is_rejected_never_stored_never_alerting(
    make_settings: Callable[..., Settings], tmp_path: Path, chaos_record: Callable[..., None]
) -> None:
    settings, url = await with_schema(make_settings, prices_partitions=3)
    btc, eth = walk("BTCUSDT", 600, 60_000.0), walk("ETHUSDT", 600, 3_000.0)
    cases = absurd(int(time.time() * 1000))
    # BTC/ETH ticks of the first 5 minutes, every absurd record, then the rest of the streams.
    records: list[Record] = [codec.encode_tick(t) for t in btc[:300] + eth[:300]]
    records += [r for r, _ in cases]
    records += [codec.encode_tick(t) for t in btc[300:] + eth[300:]]
    proc = ProcessorProcess(settings, tmp_path).start()
    try:
        await produce_records(settings, records)
        await _run_until(proc, url, stored=1_200, dead=len(cases), timeout=60)
        metrics = await proc.metrics_text()
        assert proc.alive()
    finally:
        rc = proc.stop()

    dlq = await read_topic(settings, settings.topic_dlq)
    got = {d["raw"]: d["reason"] for d in dlq}
    want = {(value or b"").decode("utf-8", errors="replace"): reason for (_, value), reason in cases}
    chaos_record(
        absurd_records=len(cases),
        dead_letters=len(dlq),
        by_reason=dict(sorted(Counter(got.values()).items())),
        exit_code=rc,
    )
    assert len(dlq) == len(cases)
    assert got == want
    stored = await stored_ticks(url)
    assert sorted(stored) == sorted((t.symbol, t.ts, t.price) for t in btc + eth)
    assert await anomaly_keys(url) == []
    assert await fetchval(url, "SELECT count(*) FROM alert_events") == 0  # no episode, no outbox row
    assert await read_topic(settings, settings.topic_alerts) == []
    assert "mw_processor_anomalies_total 0.0" in metrics
    assert rc == 0
