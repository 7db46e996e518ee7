"""Benchmark of the news pipeline: parse + sanitise + score + tag, then store, for N items.

Run: ``python bench/bench_news.py [--items N] [--repeat R] [--json]``

Prints (not a timed assertion; numbers for the README):
- parse: `parse_feed` on one generated RSS 2.0 document with N items (realistic titles, HTML
  descriptions with markup and entities), best of R, plus a breakdown (feedparser alone,
  sanitising, sentiment, tagging);
- collect: the same document read through `collect` from a local file (fetch + parse);
- store: `insert_headlines` of the N items into a fresh database (all new), then again (all
  duplicates, zero new ids), and one `headlines_near` query.

PostgreSQL: ``MW_DATABASE_URL`` when set (a scratch database is created and dropped on it),
otherwise an embedded server in a temporary directory.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import math
import os
import platform
import random
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import asyncpg
import feedparser

from mw_core.adapters.postgres.pool import create_pool
from mw_core.adapters.postgres.schema import apply_schema
from mw_core.models import dt_to_ms
from mw_core.news import collect, headlines_near, insert_headlines, parse_feed
from mw_core.news.sanitize import clean_summary, clean_title
from mw_core.news.sentiment import score_headline
from mw_core.news.tagging import tag_symbols

SYMBOLS = ["BTCUSDT", "ETHUSDT", "SOLUSDT", "BNBUSDT", "XRPUSDT"]
T0 = datetime(2024, 8, 5, tzinfo=UTC)
SUBJECTS = [
    "Bitcoin",
    "Ether",
    "Solana",
    "BNB",
    "XRP",
    "Cardano",
    "Dogecoin",
    "Crypto markets",
    "DeFi protocol",
]
EVENTS = [
    "rallies after ETF approval rumors",
    "plunges as $1B in liquidations hit",
    "hacked: $40M drained from hot wallet",
    "sets new all-time high",
    "faces SEC lawsuit over staking",
    "announces partnership with payments giant",
    "trades flat ahead of the Fed",
    "network upgrade goes live",
]


def make_feed(n: int, seed: int = 7) -> bytes:
    rnd = random.Random(seed)
    items = []
    for i in range(n):
        title = f"{rnd.choice(SUBJECTS)} {rnd.choice(EVENTS)} &amp; more ({i})"
        desc = escape(
            f"<p>{rnd.choice(SUBJECTS)} moved {rnd.uniform(-12, 12):.1f}% &amp; traders reacted.</p>"
            f"<script>track({i})</script><img src=x onerror=alert({i})><p>{'Lorem ipsum dolor sit amet. ' * 8}</p>"
        )
        published = format_datetime(T0 + timedelta(minutes=i))
        guid = f"https://news.example/{i}" if i % 3 else f"bench-{i}"
        items.append(
            f"<item><title>{title}</title><link>https://news.example/a/{i}</link>"
            f'<guid isPermaLink="false">{guid}</guid><pubDate>{published}</pubDate>'
            f"<description>{desc}</description></item>"
        )
    return (
        '<?xml version="1.0" encoding="UTF-8"?><rss version="2.0"><channel><title>Bench</title>'
        + "".join(items)
        + "</channel></rss>"
    ).encode()


def check(ok: bool, message: str) -> None:
    if not ok:
        raise SystemExit(f"bench_news: {message}")


def best_of(repeat: int, fn: Callable[[], Any]) -> tuple[float, Any]:
    best, result = math.inf, None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


async def bench_store(url: str, items: list[Any]) -> dict[str, float | int]:
    pool = await create_pool(url, max_size=2)
    try:
        await apply_schema(pool)
        start = time.perf_counter()
        first = await insert_headlines(pool, items)
        insert_s = time.perf_counter() - start
        start = time.perf_counter()
        second = await insert_headlines(pool, items)
        reinsert_s = time.perf_counter() - start
        start = time.perf_counter()
        near = await headlines_near(pool, "BTCUSDT", dt_to_ms(T0 + timedelta(minutes=len(items) // 2)))
        near_s = time.perf_counter() - start
    finally:
        await pool.close()
    return {
        "insert_s": insert_s,
        "insert_new": len(first),
        "reinsert_s": reinsert_s,
        "reinsert_new": len(second),
        "near_s": near_s,
        "near_rows": len(near),
    }


async def with_database(items: list[Any]) -> dict[str, float | int]:
    server_url = os.environ.get("MW_DATABASE_URL")
    embedded = None
    tmp = None
    if not server_url:
        from mw_core.local.postgres import EmbeddedPostgres

        tmp = tempfile.TemporaryDirectory(prefix="mw-bench-news-")
        embedded = EmbeddedPostgres(Path(tmp.name) / "data")
        server_url = embedded.start()
    name = f"mwbench_{uuid.uuid4().hex[:10]}"
    base, _, query = server_url.partition("?")
    scratch = base.rpartition("/")[0] + "/" + name + (f"?{query}" if query else "")
    conn = await asyncpg.connect(server_url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    try:
        return await bench_store(scratch, items)
    finally:
        conn = await asyncpg.connect(server_url)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()
        if embedded is not None:
            embedded.stop()
        if tmp is not None:
            tmp.cleanup()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--items", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    doc = make_feed(args.items)
    parse_s, parsed = best_of(args.repeat, lambda: parse_feed(doc, source="bench.xml", symbols=SYMBOLS))
    check(len(parsed.items) == args.items, f"parsed {len(parsed.items)} items: {parsed.errors[:3]}")

    fp_s, raw = best_of(
        args.repeat,
        lambda: feedparser.parse(io.BytesIO(doc), response_headers={"content-type": "application/xml"}),
    )
    entries = raw.entries
    sanitize_s, cleaned = best_of(
        args.repeat, lambda: [(clean_title(e.title), clean_summary(e.summary)) for e in entries]
    )
    sentiment_s, _ = best_of(args.repeat, lambda: [score_headline(t, s) for t, s in cleaned])
    tagging_s, _ = best_of(args.repeat, lambda: [tag_symbols(f"{t}\n{s}", SYMBOLS) for t, s in cleaned])

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.xml"
        path.write_bytes(doc)
        collect_s, results = best_of(1, lambda: asyncio.run(collect([str(path)], symbols=SYMBOLS)))
        check(results[0].ok and len(results[0].items) == args.items, f"collect failed: {results[0].error}")

    store = asyncio.run(with_database(parsed.items))
    check(
        store["insert_new"] == args.items and store["reinsert_new"] == 0, f"unexpected insert counts: {store}"
    )

    out = {
        "items": args.items,
        "feed_bytes": len(doc),
        "parse_s": parse_s,
        "parse_items_per_s": args.items / parse_s,
        "breakdown_s": {
            "feedparser": fp_s,
            "sanitize": sanitize_s,
            "sentiment": sentiment_s,
            "tagging": tagging_s,
        },
        "collect_file_s": collect_s,
        **store,
        "python": sys.version.split()[0],
        "machine": platform.machine(),
    }
    if args.json:
        print(json.dumps(out, indent=2))
        return
    print(f"news pipeline, {args.items} items ({len(doc) / 1024:.0f} KiB RSS), best of {args.repeat}")
    print(f"  parse_feed            {parse_s * 1000:8.1f} ms  ({out['parse_items_per_s']:,.0f} items/s)")
    for name, seconds in out["breakdown_s"].items():
        print(f"    {name:<18}  {seconds * 1000:8.1f} ms")
    print(f"  collect (file)        {collect_s * 1000:8.1f} ms")
    print(f"  insert (all new)      {store['insert_s'] * 1000:8.1f} ms  ({store['insert_new']} new ids)")
    print(f"  insert again          {store['reinsert_s'] * 1000:8.1f} ms  ({store['reinsert_new']} new ids)")
    print(f"  headlines_near        {store['near_s'] * 1000:8.1f} ms  ({store['near_rows']} rows)")
    print(f"  parse + store total   {(parse_s + store['insert_s']) * 1000:8.1f} ms")


if __name__ == "__main__":
    main()
