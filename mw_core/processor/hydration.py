"""Rebuild a symbol's analysis state from PostgreSQL (start-up, rebalance), as of a time.

Contract: for each cold symbol -> the time of its first tick in the batch, `rehydrate` rebuilds
- its windows from the stored ticks of the longest window before that time;
- the detector's cooldown from its last stored detection before it;
- in adaptive scoring, the volatility baseline from the stored 1-minute closes;
- its open episode from the stored raw detections before it (replayed through the same
  `EpisodePolicy`), with the extreme price from the stored prices the episode has seen;
and returns the keys of outbox rows found unpublished for those symbols (a dead previous owner
may have sent them: the outbox checks the topic before sending them). One set-based query per
kind of state for all cold symbols; every call goes through the processor's retrying `db`.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg

from mw_core.adapters.postgres.anomalies import last_anomaly_ts
from mw_core.adapters.postgres.episodes import detections_before, price_extremes, unpublished_events
from mw_core.adapters.postgres.prices import minute_closes, recent_prices
from mw_core.config import Settings
from mw_core.markets.analysis import Analyzer, closes_lookback_s
from mw_core.markets.episodes import EpisodePolicy

log = logging.getLogger(__name__)

DbCall = Callable[..., Awaitable[Any]]


async def rehydrate(
    pool: asyncpg.Pool,
    db: DbCall,
    analyzer: Analyzer,
    episodes: EpisodePolicy,
    before: dict[str, int],
    *,
    settings: Settings,
) -> list[tuple[str, int]]:
    """Rebuild `before`'s symbols in `analyzer` and `episodes`; the unpublished outbox keys."""
    if not before:
        return []
    history = await db(recent_prices, pool, before, lookback_s=max(settings.windows_s))
    cooldowns = await db(last_anomaly_ts, pool, before)
    orphans = await db(unpublished_events, pool, limit=10_000, symbols=list(before))
    detections = await db(detections_before, pool, before, lookback_s=episodes.rebuild_lookback_s)
    closes: dict[str, list[tuple[int, float]]] = {}
    if lookback := closes_lookback_s(settings):
        closes = await db(minute_closes, pool, before, lookback_s=lookback)
    spans: dict[str, tuple[int, int]] = {}
    for symbol, first_ts in before.items():
        analyzer.hydrate(
            symbol,
            history.get(symbol, ()),
            last_alert_ts=cooldowns.get(symbol),
            closes=closes.get(symbol, ()),
            before_ts=first_ts,
        )
        if episodes.rebuild(symbol, detections.get(symbol, ()), before_ts=first_ts) is not None:
            span = episodes.extreme_span(symbol, first_ts)
            if span is not None:
                spans[symbol] = span
    if spans:
        extremes = await db(price_extremes, pool, spans)
        for symbol, (lo, hi) in extremes.items():
            episodes.widen_extreme(symbol, lo, hi)
    log.debug("rehydrated %d symbols (%d stored ticks)", len(before), sum(len(v) for v in history.values()))
    return [e.key for _, e in orphans]
