"""`rss_poll_sensor`: poll the feeds with conditional GETs; request `headlines` runs for new items.

Cursor (JSON)::

    {"v": 1,
     "feeds": {"<url>": {"etag": "...", "last_modified": "...", "seen": ["<id>", ...]}},
     "pending": {"run_key": "headlines-<hash>", "ids": ["<id>", ...], "attempt": 0}}

- Each tick sends ``If-None-Match`` / ``If-Modified-Since`` from the cursor (`mw_core.news.collect`),
  so an unchanged feed costs a 304. Items whose id the feed already showed (``seen``, the newest
  `SEEN_MAX` per feed) or that are already in `headlines` are not new.
- New items -> one `RunRequest` with ``run_key = headlines-<sha256 of the sorted new ids>``.
  Nothing new -> `SkipReason` naming unchanged and broken feeds. A broken feed (timeout, HTTP
  error, garbage) keeps its previous cursor entry and is only logged: the others go on.
- The requested ids stay ``pending`` until they show up in `headlines`; if the run that should
  have stored them failed, the sensor requests a new run (new run key) up to `MAX_ATTEMPTS` times,
  so a failed run does not lose items that the next 304 would hide.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import dagster as dg
from dagster import SensorEvaluationContext

from mw_core.batch.partition import DatabaseErrors
from mw_core.news.fetch import SourceResult, collect
from mw_dagster.resources import PostgresResource, RSSResource, build_settings

SEEN_MAX = 200
MAX_ATTEMPTS = 3
RUN_KEY_TAG = "dagster/run_key"
FAILED = {dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED}


@dataclass
class FeedState:
    etag: str | None = None
    last_modified: str | None = None
    seen: list[str] = field(default_factory=list)


@dataclass
class RSSCursor:
    feeds: dict[str, FeedState] = field(default_factory=dict)
    pending_key: str | None = None
    pending_ids: list[str] = field(default_factory=list)
    attempt: int = 0

    @classmethod
    def loads(cls, raw: str | None) -> RSSCursor:
        """Parse a cursor; anything unreadable (old format, manual edit) starts afresh."""
        try:
            data = json.loads(raw) if raw else {}
        except ValueError:
            data = {}
        if not isinstance(data, dict):
            data = {}
        feeds: dict[str, FeedState] = {}
        for url, entry in (data.get("feeds") or {}).items():
            if isinstance(entry, dict):
                feeds[str(url)] = FeedState(
                    etag=entry.get("etag"),
                    last_modified=entry.get("last_modified"),
                    seen=[str(i) for i in entry.get("seen") or []][:SEEN_MAX],
                )
        pending = data.get("pending") or {}
        return cls(
            feeds=feeds,
            pending_key=pending.get("run_key"),
            pending_ids=[str(i) for i in pending.get("ids") or []],
            attempt=int(pending.get("attempt") or 0),
        )

    def dumps(self) -> str:
        out: dict[str, Any] = {
            "v": 1,
            "feeds": {
                url: {"etag": s.etag, "last_modified": s.last_modified, "seen": s.seen}
                for url, s in sorted(self.feeds.items())
            },
        }
        if self.pending_ids:
            out["pending"] = {"run_key": self.pending_key, "ids": self.pending_ids, "attempt": self.attempt}
        return json.dumps(out, separators=(",", ":"))

    def validators(self) -> dict[str, dict[str, str | None]]:
        return {url: {"etag": s.etag, "last_modified": s.last_modified} for url, s in self.feeds.items()}


def run_key_for(ids: list[str], attempt: int = 0) -> str:
    digest = hashlib.sha256("\n".join(sorted(ids)).encode()).hexdigest()[:20]
    return f"headlines-{digest}" + (f"-retry{attempt}" if attempt else "")


def _merge(cursor: RSSCursor, results: list[SourceResult]) -> tuple[list[str], list[str], list[str]]:
    """Fold the poll results into the cursor: (candidate ids, unchanged feeds, broken feeds)."""
    candidates: list[str] = []
    unchanged: list[str] = []
    broken: list[str] = []
    for r in results:
        state = cursor.feeds.setdefault(r.source, FeedState())
        if r.error is not None:
            broken.append(f"{r.source}: {r.error}")
            continue  # keep the previous validators and seen ids
        state.etag, state.last_modified = r.etag, r.last_modified
        if r.not_modified:
            unchanged.append(r.source)
            continue
        seen = set(state.seen)
        fresh = [h.id for h in r.items if h.id not in seen]
        candidates.extend(fresh)
        state.seen = (fresh + state.seen)[:SEEN_MAX]
    return list(dict.fromkeys(candidates)), unchanged, broken


def _stored(postgres: PostgresResource, ids: list[str], log: Any) -> set[str]:
    try:
        return postgres.existing_headline_ids(ids=ids)
    except DatabaseErrors as exc:
        # No database (yet): every candidate counts as new; the run will say what is wrong.
        log.warning("cannot check stored headlines (%s: %s)", type(exc).__name__, exc)
        return set()


def _pending_run_failed(context: SensorEvaluationContext, run_key: str | None) -> bool:
    if run_key is None:
        return False
    records = context.instance.get_run_records(filters=dg.RunsFilter(tags={RUN_KEY_TAG: run_key}), limit=1)
    return bool(records) and records[0].dagster_run.status in FAILED


def poll_feeds(
    context: SensorEvaluationContext, postgres: PostgresResource, rss: RSSResource
) -> dg.SensorResult:
    """One tick: poll the feeds, fold the answers into the cursor, request a run for new ids."""
    settings = build_settings(postgres=postgres, rss=rss)
    feeds = settings.rss_feeds
    cursor = RSSCursor.loads(context.cursor)
    if not feeds:
        return dg.SensorResult(skip_reason="no feeds configured (MW_RSS_FEEDS)", cursor=cursor.dumps())
    # Forget feeds that were removed from the configuration.
    cursor.feeds = {url: s for url, s in cursor.feeds.items() if url in feeds}
    results = asyncio.run(
        collect(feeds, symbols=settings.symbols, cursor=cursor.validators(), timeout=rss.timeout_s)
    )
    candidates, unchanged, broken = _merge(cursor, results)
    for line in broken:
        context.log.warning("feed broken (others unaffected): %s", line)

    check = list(dict.fromkeys(candidates + cursor.pending_ids))
    stored = _stored(postgres, check, context.log) if check else set()
    new_ids = [i for i in candidates if i not in stored]
    still_pending = [i for i in cursor.pending_ids if i not in stored and i not in new_ids]

    requests: list[dg.RunRequest] = []
    if new_ids:
        key = run_key_for(new_ids)
        requests.append(dg.RunRequest(run_key=key, tags={"mw/new_headlines": str(len(new_ids))}))
        cursor.pending_key, cursor.pending_ids, cursor.attempt = key, new_ids + still_pending, 0
        context.log.info("%d new headlines -> run %s", len(new_ids), key)
    elif still_pending and _pending_run_failed(context, cursor.pending_key):
        if cursor.attempt + 1 >= MAX_ATTEMPTS:
            context.log.error(
                "giving up on %d headlines after %d failed runs", len(still_pending), cursor.attempt + 1
            )
            cursor.pending_key, cursor.pending_ids, cursor.attempt = None, [], 0
        else:
            cursor.attempt += 1
            key = run_key_for(still_pending, cursor.attempt)
            requests.append(dg.RunRequest(run_key=key, tags={"mw/new_headlines": str(len(still_pending))}))
            cursor.pending_key, cursor.pending_ids = key, still_pending
            context.log.warning("run for %d headlines failed; requesting %s", len(still_pending), key)
    else:
        cursor.pending_ids = still_pending
        if not still_pending:
            cursor.pending_key, cursor.attempt = None, 0

    if requests:
        return dg.SensorResult(run_requests=requests, cursor=cursor.dumps())
    parts = [f"no new headlines ({len(feeds)} feeds: {len(unchanged)} not modified)"]
    if broken:
        parts.append("broken: " + "; ".join(broken))
    if still_pending:
        parts.append(f"{len(still_pending)} headlines pending in run {cursor.pending_key}")
    return dg.SensorResult(skip_reason="; ".join(parts), cursor=cursor.dumps())
