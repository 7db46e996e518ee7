"""Secrets canary: canary values in every secret setting must never reach any output.

Canaries go into MW_LLM_API_KEY, MW_KAFKA_SASL_PASSWORD and the password of MW_DATABASE_URL (the
test server uses trust authentication, which ignores the password, so the URL still works). Then
`mw process` runs for real (ticks, an alert, a dead letter, /healthz, /metrics, SIGTERM), `mw config`
and `mw doctor` run, and so do the failure paths that print errors and tracebacks: an unreachable
database, a SASL handshake the broker refuses, an invalid setting. Every byte of stdout, stderr,
HTTP answers and files written is scanned for the canaries.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import orjson
import pytest

from mw_core.config import Settings
from mw_core.local.ports import free_port
from mw_core.models import Tick
from tests.chaos.support import (
    T0,
    ProcessorProcess,
    ensure_schema,
    fetchval,
    processor_env,
    produce_records,
    produce_ticks,
    wait_for,
)

pytestmark = pytest.mark.chaos


def _with_password(url: str, password: str, *, port: int | None = None) -> str:
    parts = urlsplit(url)
    user = parts.username or "postgres"
    netloc = f"{user}:{password}@{parts.hostname}:{port or parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


async def run_mw(args: list[str], env: dict[str, str], cwd: Path, *, timeout: float = 60) -> tuple[int, str]:
    """Run `python -m mw_core.cli ARGS`; return (exit code, stdout + stderr)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "mw_core.cli",
        *args,
        env=env,
        cwd=cwd,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        out, _ = await proc.communicate()
    return int(proc.returncode if proc.returncode is not None else -9), out.decode(errors="replace")


@pytest.mark.timeout(150)
async def test_canary_secrets_never_appear_in_any_output(
    make_settings: Callable[..., Settings], tmp_path: Path, chaos_record: Callable[..., None]
) -> None:
    tag = uuid.uuid4().hex[:12]
    canaries = {
        "llm": f"sk-canaryLLM{tag}",
        "sasl": f"canarySASL{tag}",
        "db": f"canaryDBPW{tag}",
    }
    base = make_settings(prices_partitions=3)
    assert base.database_url is not None
    plain_url = base.database_url.get_secret_value()
    if urlsplit(plain_url).password:
        pytest.skip("the test database needs a real password; the canary cannot replace it")
    await ensure_schema(plain_url)
    secret_url = _with_password(plain_url, canaries["db"])
    settings = make_settings(prices_partitions=3, database_url=secret_url)
    closed = free_port()  # nothing listens here
    secrets = {
        "MW_LLM_PROVIDER": "openai",
        "MW_LLM_API_KEY": canaries["llm"],
        "MW_KAFKA_SASL_USERNAME": "chaos",
        "MW_KAFKA_SASL_PASSWORD": canaries["sasl"],
        "MW_LOG_LEVEL": "DEBUG",
        "MW_BINANCE_REST_URL": f"http://127.0.0.1:{closed}",
        "MW_BINANCE_WS_URL": f"ws://127.0.0.1:{closed}",
        "MW_RSS_FEEDS": f"http://127.0.0.1:{closed}/rss",
    }
    outputs: dict[str, str] = {}

    # 1. The long-lived processor, doing real work: ticks, an alert, a dead letter.
    proc = ProcessorProcess(settings, tmp_path / "process", name="process", env=secrets).start()
    try:
        ticks = [
            Tick(
                "CNRYUSDT", T0 + i * 1000, 100.0 * (1.05 if i >= 150 else 1.0) * (1.0005 if i % 2 else 0.9995)
            )
            for i in range(200)
        ]
        await produce_ticks(settings, ticks)
        await produce_records(settings, [(b"CNRYUSDT", b"{not json")])

        async def done() -> bool:
            health = await proc.health()
            return bool(health and health[1]["alerts"] >= 1 and health[1]["dead_letters"] >= 1)

        await wait_for(done, timeout=60, what="an alert and a dead letter")
        health = await proc.health()
        outputs["process /healthz"] = orjson.dumps(health).decode()
        outputs["process /metrics"] = await proc.metrics_text()
    finally:
        rc = proc.stop()
    assert rc == 0
    assert await fetchval(plain_url, "SELECT count(*) FROM prices") == 200  # the canary URL worked
    outputs["mw process"] = proc.output()

    # 2. Commands and failure paths, all with the canaries set.
    env = processor_env(settings, **secrets)
    runs: dict[str, tuple[list[str], dict[str, str]]] = {
        "mw config": (["config"], env),
        "mw config --json": (["config", "--json"], env),
        "mw doctor": (["doctor", "--timeout", "3"], env),
        "mw doctor (db down, SASL refused)": (
            ["doctor", "--timeout", "3"],
            {
                **env,
                "MW_DATABASE_URL": _with_password(plain_url, canaries["db"], port=closed),
                "MW_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
            },
        ),
        "mw process (db down)": (
            ["process"],
            {**env, "MW_DATABASE_URL": _with_password(plain_url, canaries["db"], port=closed)},
        ),
        "mw process (SASL refused)": (["process"], {**env, "MW_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT"}),
        "mw config (invalid setting)": (["config"], {**env, "MW_PRICES_PARTITIONS": "0"}),
    }
    codes: dict[str, int] = {}
    (tmp_path / "cli").mkdir()
    for name, (args, run_env) in runs.items():
        codes[name], outputs[name] = await run_mw(args, run_env, tmp_path / "cli", timeout=40)

    # 3. Anything written to disk by the runs.
    for path in tmp_path.rglob("*"):
        if path.is_file():
            outputs[f"file {path.relative_to(tmp_path)}"] = path.read_text(errors="replace")

    leaks = {
        f"{where}: {kind}": text[max(0, text.find(value) - 80) : text.find(value) + 40]
        for where, text in outputs.items()
        for kind, value in canaries.items()
        if value in text
    }
    chaos_record(
        outputs_scanned=len(outputs),
        bytes_scanned=sum(len(t) for t in outputs.values()),
        exit_codes=codes,
        leaks=sorted(leaks),
    )
    assert not leaks, f"canary secrets leaked: {leaks}"
    # The canaries were really loaded (masked, not absent).
    config_json = orjson.loads(outputs["mw config --json"].strip().splitlines()[-1])
    assert config_json["llm_api_key"] == config_json["kafka_sasl_password"] == "**********"
    assert ":***@" in config_json["database_url"]
    assert codes["mw config (invalid setting)"] == 2
    assert codes["mw process (db down)"] != 0


@pytest.mark.parametrize("form", ["query", "empty-user"])
async def test_canary_password_in_other_url_forms_is_masked(
    make_settings: Callable[..., Settings], tmp_path: Path, form: str
) -> None:
    canary = f"canaryDBPW{uuid.uuid4().hex[:12]}"
    base = make_settings()
    assert base.database_url is not None
    parts = urlsplit(base.database_url.get_secret_value())
    if parts.password:
        pytest.skip("the test database needs a real password; the canary cannot replace it")
    if form == "query":  # still a working URL: trust auth ignores the password
        url = urlunsplit(parts._replace(query=f"password={canary}"))
    else:
        url = urlunsplit(parts._replace(netloc=f":{canary}@{parts.hostname}:{parts.port}"))
    env = processor_env(make_settings(database_url=url))
    outputs = [await run_mw(args, env, tmp_path, timeout=40) for args in (["config", "--json"], ["doctor"])]
    assert not [text for _, text in outputs if canary in text]
