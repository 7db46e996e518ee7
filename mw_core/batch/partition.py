"""The batch re-computation of anomaly detection (`price_anomalies`) and its stream/batch agreement.

Contract:
- No dagster import (STYLE.md §1): the Dagster asset calls `compute_partition` under
  ``asyncio.run`` through `run_with_pool` and turns the returned `PartitionRun` into metadata.
- One partition = ``[start_ms, end_ms)``. Its ticks plus the longest window before it (warm-up) are
  read in one set-based query, the detector the streaming processor uses
  (`mw_core.markets.analysis`, windows/thresholds/cooldown from `Settings`) runs over them,
  and the partition's `batch_anomalies` rows are replaced in one transaction, so re-runs and
  backfills are idempotent.
- All SQL is static text with ``$n`` parameters. Times travel as epoch-millisecond ``int8`` and are
  converted in SQL (``timestamptz 'epoch' + ms * interval '1 millisecond'``), which is exact.
- `DatabaseErrors` / `UndefinedTable` name the driver's errors for callers outside `mw_core`
  (sensors) so they catch "no database" / "no schema yet" without importing the driver.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import asyncpg

from mw_core.adapters.postgres import schema
from mw_core.adapters.postgres.anomalies import anomaly_columns, last_anomaly_ts
from mw_core.adapters.postgres.episodes import detections_before, events_between, price_extremes
from mw_core.adapters.postgres.pool import create_pool
from mw_core.adapters.postgres.prices import minute_closes
from mw_core.config import Settings
from mw_core.markets.analysis import adaptive_config, analyse_series, closes_lookback_s
from mw_core.markets.episodes import EpisodeEvent, EpisodePolicy
from mw_core.models import Anomaly

T = TypeVar("T")

#: A coroutine function of a pool: what `run_with_pool` runs.
PoolFn = Callable[[asyncpg.Pool], Awaitable[T]]

MINUTE_MS = 60_000

#: "No database / connection lost / SQL error": what a caller of `run_with_pool` may see.
DatabaseErrors: tuple[type[Exception], ...] = (OSError, asyncpg.PostgresError)
#: A table is missing: the schema has not been applied yet (a fresh database).
UndefinedTable = asyncpg.UndefinedTableError


# --- the sync seam ---------------------------------------------------------------------------------


async def with_pool(url: str, fn: PoolFn[T], *, max_size: int = 4) -> T:
    """Run ``fn(pool)`` on a fresh pool and close the pool afterwards."""
    pool = await create_pool(url, min_size=1, max_size=max_size)
    try:
        return await fn(pool)
    finally:
        await pool.close()


def run_with_pool(url: str, fn: PoolFn[T], *, max_size: int = 4) -> T:
    """Synchronous `with_pool`: its own event loop and pool per call.

    An asyncpg pool belongs to the loop that created it, so sync callers (Dagster assets, sensors
    on gRPC threads) pass a URL and get a short-lived pool; no loop outlives the call.
    """
    return asyncio.run(with_pool(url, fn, max_size=max_size))


# --- records ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SchemaOverview:
    """Result of `apply_schema`: the schema state plus our tables' row counts."""

    version: int
    timescale: bool
    applied: tuple[int, ...]  # migrations applied by this call
    counts: dict[str, int]


@dataclass(frozen=True, slots=True)
class SymbolSeries:
    """One symbol's ticks of a partition: `warmup` (before the partition) and `ticks` (inside)."""

    symbol: str
    warmup: list[tuple[int, float]]
    ticks: list[tuple[int, float]]
    minutes_covered: int  # distinct 1-minute buckets with at least one tick inside the partition


@dataclass(frozen=True, slots=True)
class PartitionPrices:
    start_ms: int
    end_ms: int
    series: list[SymbolSeries]  # ordered by symbol
    rows_scanned: int  # warmup + partition rows read


@dataclass(frozen=True, slots=True)
class Agreement:
    """Stream (`anomalies`) vs batch (`batch_anomalies`) for one time range, by natural key."""

    both: int
    batch_only: int
    stream_only: int

    @property
    def batch_total(self) -> int:
        return self.both + self.batch_only

    @property
    def stream_total(self) -> int:
        return self.both + self.stream_only

    @property
    def ratio(self) -> float:
        """Jaccard agreement of the two key sets; 1.0 when both are empty."""
        union = self.both + self.batch_only + self.stream_only
        return 1.0 if union == 0 else self.both / union

    @classmethod
    def total(cls, parts: Sequence[Agreement]) -> Agreement:
        """The agreement of disjoint ranges taken together (e.g. the days of a backfill)."""
        return cls(
            both=sum(p.both for p in parts),
            batch_only=sum(p.batch_only for p in parts),
            stream_only=sum(p.stream_only for p in parts),
        )


@dataclass(frozen=True, slots=True)
class PartitionRun:
    """What one partition's computation read, found and how it compares with the stream."""

    key: str
    rows_scanned: int
    warmup_rows: int
    symbols: int
    coverage: list[float]  # per symbol with ticks: covered minutes / minutes in the partition
    anomalies: list[Anomaly]
    agreement: Agreement
    events: list[EpisodeEvent]  # the batch's episode events (open / escalate / close)
    episode_agreement: Agreement  # stream vs batch alerts (open + escalate)
    read_s: float
    detect_s: float
    write_s: float


# --- SQL -------------------------------------------------------------------------------------------

# Every symbol's ticks in [start - warmup, end), grouped per symbol and ordered by ts, plus the number
# of covered minutes inside the partition (date_bin buckets). One round trip, arrays decode fast.
_PARTITION_PRICES = """
WITH bounds AS (
    SELECT timestamptz 'epoch' + $1::int8 * interval '1 millisecond' AS p_start,
           timestamptz 'epoch' + $2::int8 * interval '1 millisecond' AS p_end,
           timestamptz 'epoch' + ($1::int8 - $3::int8 * 1000) * interval '1 millisecond' AS w_start
)
SELECT p.symbol,
       array_agg((extract(epoch FROM p.ts) * 1000)::int8 ORDER BY p.ts) AS ts_ms,
       array_agg(p.price ORDER BY p.ts) AS prices,
       count(*) FILTER (WHERE p.ts < b.p_start) AS n_warmup,
       count(DISTINCT date_bin(interval '1 minute', p.ts, timestamptz 'epoch'))
           FILTER (WHERE p.ts >= b.p_start) AS minutes
FROM prices p CROSS JOIN bounds b
WHERE p.ts >= b.w_start AND p.ts < b.p_end
GROUP BY p.symbol
ORDER BY p.symbol
"""

# Cooldown seed from earlier batch partitions, for symbols the stream never alerted on (backfills).
_LAST_BATCH_ANOMALY = """
SELECT q.symbol, (extract(epoch FROM max(a.ts)) * 1000)::int8 AS ts_ms
FROM unnest($1::text[]) AS q(symbol)
JOIN batch_anomalies a ON a.symbol = q.symbol
     AND a.ts < timestamptz 'epoch' + $2::int8 * interval '1 millisecond'
     AND a.ts >= timestamptz 'epoch' + ($2::int8 - $3::int8 * 1000) * interval '1 millisecond'
GROUP BY q.symbol
"""

_DELETE_BATCH = """
DELETE FROM batch_anomalies
WHERE partition_key = $1
   OR (ts >= timestamptz 'epoch' + $2::int8 * interval '1 millisecond'
       AND ts < timestamptz 'epoch' + $3::int8 * interval '1 millisecond')
"""

_INSERT_BATCH = """
INSERT INTO batch_anomalies (partition_key, symbol, ts, window_s, ret, direction, price, threshold, volatility)
SELECT $1, s, timestamptz 'epoch' + t * interval '1 millisecond', w, r, d, p, th, v
FROM unnest($2::text[], $3::int8[], $4::int4[], $5::float8[], $6::text[], $7::float8[], $8::float8[],
            $9::float8[]) AS u(s, t, w, r, d, p, th, v)
ON CONFLICT (symbol, ts, window_s) DO UPDATE
    SET partition_key = EXCLUDED.partition_key, ret = EXCLUDED.ret, direction = EXCLUDED.direction,
        price = EXCLUDED.price, threshold = EXCLUDED.threshold, volatility = EXCLUDED.volatility,
        computed_at = now()
"""

_AGREEMENT = """
WITH b AS (
    SELECT symbol, ts, window_s FROM batch_anomalies
    WHERE ts >= timestamptz 'epoch' + $1::int8 * interval '1 millisecond'
      AND ts <  timestamptz 'epoch' + $2::int8 * interval '1 millisecond'
), s AS (
    SELECT symbol, ts, window_s FROM anomalies
    WHERE ts >= timestamptz 'epoch' + $1::int8 * interval '1 millisecond'
      AND ts <  timestamptz 'epoch' + $2::int8 * interval '1 millisecond'
)
SELECT count(*) FILTER (WHERE b.symbol IS NOT NULL AND s.symbol IS NOT NULL) AS both_,
       count(*) FILTER (WHERE s.symbol IS NULL) AS batch_only,
       count(*) FILTER (WHERE b.symbol IS NULL) AS stream_only
FROM b FULL OUTER JOIN s ON b.symbol = s.symbol AND b.ts = s.ts AND b.window_s = s.window_s
"""

# --- queries -------------------------------------------------------------------------------------


async def apply_schema(pool: asyncpg.Pool) -> SchemaOverview:
    """`mw_core.adapters.postgres.schema.apply_schema` (idempotent, advisory-locked), then every table's row count."""
    info = await schema.apply_schema(pool)
    counts = await schema.table_counts(pool)
    return SchemaOverview(info.version, info.timescale, info.applied, counts)


async def load_partition(pool: asyncpg.Pool, *, start_ms: int, end_ms: int, warmup_s: int) -> PartitionPrices:
    """All ticks of [start, end) plus the `warmup_s` seconds before, per symbol, in one query."""
    rows = await pool.fetch(_PARTITION_PRICES, start_ms, end_ms, warmup_s)
    series: list[SymbolSeries] = []
    scanned = 0
    for r in rows:
        pairs = list(zip(r["ts_ms"], r["prices"], strict=True))
        n_warmup = int(r["n_warmup"])
        scanned += len(pairs)
        series.append(SymbolSeries(r["symbol"], pairs[:n_warmup], pairs[n_warmup:], int(r["minutes"])))
    return PartitionPrices(start_ms=start_ms, end_ms=end_ms, series=series, rows_scanned=scanned)


async def cooldown_seeds(
    pool: asyncpg.Pool, symbols: Sequence[str], *, start_ms: int, cooldown_s: int
) -> dict[str, int]:
    """Each symbol's last alert before `start_ms`, the way the stream seeds its detector.

    The stream reads its own `anomalies` table (`mw_core.adapters.postgres.anomalies.last_anomaly_ts`); a symbol the stream
    never alerted on (a day loaded by backfill, processor down) falls back to the batch results of
    the previous partition within one cooldown, so partition boundaries behave like one long run.
    """
    if not symbols:
        return {}
    seeds = await last_anomaly_ts(pool, dict.fromkeys(symbols, start_ms))
    missing = [s for s in symbols if s not in seeds]
    if missing and cooldown_s > 0:
        rows = await pool.fetch(_LAST_BATCH_ANOMALY, missing, start_ms, cooldown_s)
        seeds.update({r["symbol"]: int(r["ts_ms"]) for r in rows if r["ts_ms"] is not None})
    return seeds


async def replace_batch_anomalies(
    pool: asyncpg.Pool, *, partition_key: str, start_ms: int, end_ms: int, anomalies: Sequence[Anomaly]
) -> int:
    """Replace the partition's rows of `batch_anomalies` atomically (delete + bulk insert)."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(_DELETE_BATCH, partition_key, start_ms, end_ms)
        if anomalies:
            # symbol, ts, window_s, ret, direction, price, threshold, volatility
            await conn.execute(_INSERT_BATCH, partition_key, *anomaly_columns(anomalies)[:8])
    return len(anomalies)


async def agreement(pool: asyncpg.Pool, *, start_ms: int, end_ms: int) -> Agreement:
    """Stream vs batch anomalies in [start, end), matched by (symbol, ts, window)."""
    row = await pool.fetchrow(_AGREEMENT, start_ms, end_ms)
    if row is None:  # an aggregate always returns one row
        raise RuntimeError("aggregate query returned no row")
    return Agreement(
        both=int(row["both_"]), batch_only=int(row["batch_only"]), stream_only=int(row["stream_only"])
    )


# --- the computation -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BatchStart:
    """What the batch needs of the time before a partition, read the way the stream rehydrates."""

    cooldowns: dict[str, int] = field(default_factory=dict)  # last alert per symbol (`cooldown_seeds`)
    # raw detections that may still hold an episode open
    detections: dict[str, list[Anomaly]] = field(default_factory=dict)
    # symbol -> (t0, t1, lo, hi) of the stored prices an open episode has seen
    extremes: dict[str, tuple[int, int, float, float]] = field(default_factory=dict)
    closes: dict[str, list[tuple[int, float]]] = field(default_factory=dict)  # adaptive scoring only


def detect_partition(
    data: PartitionPrices, settings: Settings, start: BatchStart
) -> tuple[list[Anomaly], list[EpisodeEvent]]:
    """Run THE analysis path (windows, detector, episodes) over every symbol of a partition (pure).

    Args:
        data: The partition's ticks and warm-up ticks (`load_partition`).
        settings: Windows, thresholds, cooldown, scoring and episodes, shared with the stream.
        start: The state before the partition (`load_start`; `BatchStart()`: a cold start).

    Returns:
        The raw detections and the episode events, in time order per symbol.
    """
    adaptive = adaptive_config(settings)
    found: list[Anomaly] = []
    events: list[EpisodeEvent] = []
    for series in data.series:
        if not series.ticks:
            continue
        policy = EpisodePolicy.from_settings(settings)
        symbol = series.symbol
        first_ts = series.ticks[0][0]
        if policy.rebuild(symbol, start.detections.get(symbol, ()), before_ts=first_ts) is not None:
            span = policy.extreme_span(symbol, first_ts)
            ext = start.extremes.get(symbol)
            if span is not None and ext is not None:
                policy.widen_extreme(symbol, ext[2], ext[3])
        found.extend(
            analyse_series(
                symbol,
                series.ticks,
                windows_s=settings.windows_s,
                threshold_for=settings.threshold_for,
                cooldown_s=settings.cooldown_s,
                warmup=series.warmup,
                last_alert_ts=start.cooldowns.get(symbol),
                max_out_of_order_s=settings.max_out_of_order_s,
                sink=policy,
                adaptive=adaptive,
                closes=start.closes.get(symbol, ()),
            ).anomalies
        )
        events.extend(policy.take())
    return found, events


async def load_start(pool: asyncpg.Pool, data: PartitionPrices, settings: Settings) -> BatchStart:
    """The state before the partition: cooldowns, open-episode detections, extremes, closes."""
    symbols = [s.symbol for s in data.series if s.ticks]
    before = {s.symbol: s.ticks[0][0] for s in data.series if s.ticks}
    cooldowns = await cooldown_seeds(pool, symbols, start_ms=data.start_ms, cooldown_s=settings.cooldown_s)
    detections = await detections_before(
        pool, before, lookback_s=EpisodePolicy.from_settings(settings).rebuild_lookback_s
    )
    # The span an open episode has seen is only known after the rebuild: rebuild once here.
    spans: dict[str, tuple[int, int]] = {}
    for symbol, dets in detections.items():
        policy = EpisodePolicy.from_settings(settings)
        if policy.rebuild(symbol, dets, before_ts=before[symbol]) is not None:
            span = policy.extreme_span(symbol, before[symbol])
            if span is not None:
                spans[symbol] = span
    lohi = await price_extremes(pool, spans)
    extremes = {s: (*spans[s], lo, hi) for s, (lo, hi) in lohi.items()}
    closes: dict[str, list[tuple[int, float]]] = {}
    if lookback := closes_lookback_s(settings):
        closes = await minute_closes(pool, before, lookback_s=lookback)
    return BatchStart(cooldowns=cooldowns, detections=detections, extremes=extremes, closes=closes)


def _alert_keys(events: Sequence[EpisodeEvent]) -> set[tuple[str, int, str]]:
    return {(e.episode_id, e.seq, e.kind) for e in events if e.kind != "close"}


async def episode_agreement(
    pool: asyncpg.Pool, events: Sequence[EpisodeEvent], *, start_ms: int, end_ms: int
) -> Agreement:
    """Stream (`alert_events`) vs batch alerts (open + escalate) in [start, end), by (episode, seq, kind)."""
    stream = _alert_keys(await events_between(pool, start_ms=start_ms, end_ms=end_ms))
    batch = _alert_keys([e for e in events if start_ms <= e.ts < end_ms])
    return Agreement(
        both=len(stream & batch), batch_only=len(batch - stream), stream_only=len(stream - batch)
    )


async def compute_partition(
    pool: asyncpg.Pool, settings: Settings, *, key: str, start_ms: int, end_ms: int
) -> PartitionRun:
    """Detect one partition's anomalies from `prices`, replace its `batch_anomalies`, compare.

    Args:
        pool: Pool on the Market Watch database (schema applied).
        settings: Detector settings (the streaming processor's).
        key: Partition key, stored with each row (e.g. ``2024-08-05``).
        start_ms: Partition start (inclusive), epoch ms.
        end_ms: Partition end (exclusive), epoch ms.
    """
    t0 = time.perf_counter()
    data = await load_partition(pool, start_ms=start_ms, end_ms=end_ms, warmup_s=max(settings.windows_s))
    start = await load_start(pool, data, settings)
    t1 = time.perf_counter()
    found, events = detect_partition(data, settings, start)
    t2 = time.perf_counter()
    await replace_batch_anomalies(pool, partition_key=key, start_ms=start_ms, end_ms=end_ms, anomalies=found)
    agreed = await agreement(pool, start_ms=start_ms, end_ms=end_ms)
    episodes_agreed = await episode_agreement(pool, events, start_ms=start_ms, end_ms=end_ms)
    t3 = time.perf_counter()
    minutes = max(1, (end_ms - start_ms) // MINUTE_MS)
    partition_ticks = sum(len(s.ticks) for s in data.series)
    return PartitionRun(
        key=key,
        rows_scanned=data.rows_scanned,
        warmup_rows=data.rows_scanned - partition_ticks,
        symbols=sum(1 for s in data.series if s.ticks),
        coverage=[s.minutes_covered / minutes for s in data.series if s.ticks],
        anomalies=found,
        agreement=agreed,
        events=events,
        episode_agreement=episodes_agreed,
        read_s=t1 - t0,
        detect_s=t2 - t1,
        write_s=t3 - t2,
    )
