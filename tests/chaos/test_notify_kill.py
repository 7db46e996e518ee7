"""The notifier as a real `mw notify` subprocess under faults: SIGKILL mid-batch, a channel down 60 s.

Receivers are local HTTP servers (`tests.fakes.webhook.Receiver`): our signed webhook (verified
signature, `Idempotency-Key`) and Apprise ``json://``. A receiver that honours the idempotency
key accepts a key once and acknowledges a repeat without acting on it; the tests count accepted
(event, channel) pairs that way, and count the repeats the at-least-once design allows (a kill
between the receiver's 200 and the ``delivered`` row) separately.

No secret (channel token, webhook secret, token in the webhook's query) may appear in any output
of the subprocesses.
"""

from __future__ import annotations

import asyncio
import random
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from mw_core.config import Settings
from mw_core.notify.channels import channel_id
from tests.chaos.support import ProcessorProcess, fetch, fetchval, spawn_mw, wait_for, with_schema
from tests.fakes.webhook import Ok, Receiver, Stall, Status
from tests.integration.notify.conftest import episode, produce

pytestmark = [pytest.mark.chaos, pytest.mark.timeout(240)]

SECRET = "whsec-CHAOS-5150"
TOKEN = "jsonTOKEN-chaos-77"
QUERY_TOKEN = "qTOKEN-chaos-31"
SECRETS = (SECRET, TOKEN, QUERY_TOKEN)


class NotifierProcess(ProcessorProcess):
    """One `mw notify` child (same process handling as the processor's)."""

    def start(self) -> NotifierProcess:
        self.workdir.mkdir(parents=True, exist_ok=True)
        with open(self.stdout_path, "ab") as out, open(self.stderr_path, "ab") as err:
            self.proc = spawn_mw("notify", env=self.env, cwd=self.workdir, stdout=out, stderr=err)
        return self


def notify_env(
    settings: Settings, webhook: Receiver, json_receiver: Receiver | None, **extra: str
) -> dict[str, str]:
    env = {
        "MW_WEBHOOK_URL": f"{webhook.url}/mw?token={QUERY_TOKEN}",
        "MW_WEBHOOK_SECRET": SECRET,
        "MW_NOTIFY_GROUP": f"{settings.consumer_group}-notify",
        "MW_NOTIFY_MAX_ATTEMPTS": "50",
        **extra,
    }
    if json_receiver is not None:
        env["MW_NOTIFY_URLS"] = f"json://bot:{TOKEN}@127.0.0.1:{json_receiver.port}/alerts"
    return env


def events(n: int) -> list[bytes]:
    """One episode: open, then n - 1 escalations, each body distinct (rising move)."""
    return [episode(s, "open" if s == 1 else "escalate", ret=-0.03 - s / 10_000) for s in range(1, n + 1)]


async def delivered_keys(url: str) -> dict[str, int]:
    rows = await fetch(
        url,
        "SELECT idempotency_key, count(*) AS n FROM notification_deliveries "
        "WHERE status = 'delivered' GROUP BY idempotency_key",
    )
    return {str(r["idempotency_key"]): int(r["n"]) for r in rows}


async def count_status(url: str, status: str) -> int:
    return int(await fetchval(url, "SELECT count(*) FROM notification_deliveries WHERE status = $1", status))


async def test_sigkill_mid_batch_accepts_each_event_once_per_channel(
    make_settings: Callable[..., Settings], tmp_path: Path, chaos_record: Callable[..., None]
) -> None:
    n, kills = 240, 3
    webhook = Receiver(secret=SECRET).start()
    json_receiver = Receiver().start()
    webhook.default = json_receiver.default = Stall(0.01)  # a receiver that takes a moment
    settings, url = await with_schema(make_settings)
    env = notify_env(settings, webhook, json_receiver, MW_NOTIFY_RATE_PER_MIN="3000", MW_NOTIFY_BURST="20")
    await produce(settings, events(n))
    total = 2 * n
    rng = random.Random(10)
    procs: list[NotifierProcess] = []
    try:
        for i in range(kills):
            proc = NotifierProcess(settings, tmp_path, name=f"notify-{i}", env=env).start()
            procs.append(proc)
            done = len(await delivered_keys(url))
            goal = min(total - 1, done + rng.randint(40, 120))

            async def progressed(goal: int = goal) -> bool:
                return len(await delivered_keys(url)) >= goal

            await wait_for(progressed, timeout=90, what=f"{goal} deliveries before kill {i + 1}")
            proc.kill(signal.SIGKILL)  # workers are mid-batch: attempts in flight on both channels
        final = NotifierProcess(settings, tmp_path, name="notify-final", env=env).start()
        procs.append(final)

        async def all_delivered() -> bool:
            return len(await delivered_keys(url)) >= total

        await wait_for(all_delivered, timeout=120, what="every (event, channel) delivered")
        assert final.stop() == 0
    finally:
        for p in procs:
            if p.alive():
                p.kill(signal.SIGKILL)
        webhook.stop()
        json_receiver.stop()

    hook_id = channel_id(env["MW_WEBHOOK_URL"])
    expected = {f"BTCUSDT-1722820079999/{s}@{hook_id}" for s in range(1, n + 1)}
    accepted = webhook.ok_requests()
    assert {r.key for r in accepted} == expected  # each (event, webhook) accepted, by key, once
    assert all(r.signature_ok for r in accepted)
    # A request cut by the kill (body shorter than announced) fails verification and is refused;
    # every complete request is correctly signed.
    whole = [r for r in webhook.requests if len(r.body) == int(r.headers.get("content-length", -1))]
    assert all(r.signature_ok for r in whole)
    resent = len(accepted) - len(expected)  # repeats the receiver dropped by Idempotency-Key
    assert resent <= kills  # at most the one attempt in flight when each kill landed
    json_bodies = {r.body for r in json_receiver.ok_requests()}
    assert len(json_bodies) == n  # every event reached the Apprise channel too
    json_resent = len(json_receiver.ok_requests()) - n
    assert json_resent <= kills
    rows = await delivered_keys(url)
    assert len(rows) == total and set(rows.values()) == {1}  # exactly one `delivered` row per key
    assert await count_status(url, "queued") == total  # a restart re-queued nothing
    for p in procs:
        output = p.output()
        assert not any(s in output for s in SECRETS), f"{p.name} printed a secret"
    chaos_record(
        events=n,
        channels=2,
        kills=kills,
        webhook_resent_and_dropped_by_key=resent,
        json_resent=json_resent,
        delivered_rows=len(rows),
    )


async def test_channel_down_60s_then_back_delivers_backlog_in_order(
    make_settings: Callable[..., Settings], tmp_path: Path, chaos_record: Callable[..., None]
) -> None:
    outage_s, n = 60.0, 30
    webhook = Receiver(secret=SECRET).start()
    settings, url = await with_schema(make_settings)
    env = notify_env(
        settings,
        webhook,
        None,
        MW_NOTIFY_RATE_PER_MIN="600",
        MW_NOTIFY_BURST="10",
        MW_NOTIFY_CIRCUIT_FAILURES="3",
        MW_NOTIFY_CIRCUIT_OPEN_S="5",
        MW_LOG_LEVEL="DEBUG",  # the most talkative logs must still hold no secret
    )
    proc = NotifierProcess(settings, tmp_path, name="notify", env=env).start()
    try:
        await produce(settings, events(5))

        async def first_five() -> bool:
            return len(webhook.ok_requests()) >= 5

        await wait_for(first_five, timeout=60, what="deliveries before the outage")
        webhook.default = Status(503)  # the channel goes down
        down_at = time.monotonic()
        await produce(settings, events(n)[5:])

        async def parked() -> bool:
            answer = await proc.health()
            if answer is None:
                return False
            (channel,) = answer[1]["channels"].values()
            return bool(channel["circuit"] != "closed" and channel["parked"] > 0)

        await wait_for(parked, timeout=30, what="the channel to be parked")
        await asyncio.sleep(max(0.0, outage_s - (time.monotonic() - down_at)))
        webhook.default = Ok()  # back
        back_at = time.monotonic()

        async def backlog_delivered() -> bool:
            return len({r.key for r in webhook.ok_requests()}) >= n

        await wait_for(backlog_delivered, timeout=60, what="the backlog after recovery")
        drained_s = time.monotonic() - back_at
        assert proc.stop() == 0
    finally:
        if proc.alive():
            proc.kill(signal.SIGKILL)
        webhook.stop()

    accepted = webhook.ok_requests()
    seqs = [int(r.json()["seq"]) for r in accepted]
    assert seqs == list(range(1, n + 1))  # in order, nothing duplicated, nothing lost
    assert webhook.duplicates() == []
    failed_during_outage = [r for r in webhook.requests if r.status == 503]
    assert 3 <= len(failed_during_outage) <= 3 + int(outage_s / 5) + 2  # parked: probes, not hammering
    rows = await delivered_keys(url)
    assert len(rows) == n and set(rows.values()) == {1}
    assert await count_status(url, "parked") >= 1
    assert await count_status(url, "dead") == 0
    output = proc.output()
    assert "parked after 3 consecutive failures" in output
    assert not any(s in output for s in SECRETS), "a secret reached the notifier's output"
    chaos_record(
        outage_s=outage_s,
        events=n,
        attempts_during_outage=len(failed_during_outage),
        backlog_drained_s=round(drained_s, 2),
    )
