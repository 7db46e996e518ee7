"""The `mw` CLI as a user runs it: real subprocesses against the real test servers."""

from __future__ import annotations

import os
import subprocess
import sys

import orjson
import pytest

from mw_core.config import Settings
from mw_core.local.ports import free_port

pytestmark = pytest.mark.integration


def mw(args: list[str], env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mw_core.cli", *args],
        env={**os.environ, "COLUMNS": "200", **env},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_doctor_reports_db_and_kafka_ok_and_binance_unreachable(settings: Settings) -> None:
    assert settings.database_url is not None and settings.kafka_bootstrap is not None
    dead = free_port()
    env = {
        "MW_DATABASE_URL": settings.database_url.get_secret_value(),
        "MW_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
        "MW_BINANCE_WS_URL": f"ws://127.0.0.1:{dead}",
        "MW_BINANCE_REST_URL": f"http://127.0.0.1:{dead}",
        "MW_RSS_FEEDS": "none",
    }
    proc = mw(["doctor", "--timeout", "3"], env)
    assert proc.returncode == 0, proc.stderr
    lines = {line.split("│")[1].strip(): line for line in proc.stdout.splitlines() if line.count("│") >= 4}
    assert " ok " in lines["database"] and " ok " in lines["kafka"]
    assert " warn " in lines["binance-rest"] and "unreachable" in lines["binance-rest"]
    assert "mw replay" in proc.stdout  # tells the user what to do offline


def test_doctor_checks_each_notify_channel_with_masked_names(settings: Settings) -> None:
    """A reachable signed webhook is ok, a json:// channel on a dead port fails; no token shown."""
    from tests.fakes.webhook import Receiver

    assert settings.database_url is not None and settings.kafka_bootstrap is not None
    receiver = Receiver(secret="whsec-canary").start()
    try:
        proc = mw(
            ["doctor", "--timeout", "2"],
            {
                "MW_DATABASE_URL": settings.database_url.get_secret_value(),
                "MW_KAFKA_BOOTSTRAP": settings.kafka_bootstrap,
                "MW_RSS_FEEDS": "none",
                "MW_NOTIFY_URLS": f"json://user:tok-canary@127.0.0.1:{free_port()}/hook",
                "MW_WEBHOOK_URL": f"{receiver.url}/mw?token=q-canary",
                "MW_WEBHOOK_SECRET": "whsec-canary",
            },
        )
    finally:
        receiver.stop()
    assert proc.returncode == 1, proc.stdout  # one channel is unreachable
    rows = [line for line in proc.stdout.splitlines() if "notify #" in line]
    assert len(rows) == 2, proc.stdout
    assert " fail " in rows[0] and " ok " in rows[1], rows
    assert "canary" not in proc.stdout + proc.stderr


def test_doctor_fails_when_the_database_is_down() -> None:
    proc = mw(
        ["doctor", "--timeout", "2"],
        {
            "MW_DATABASE_URL": f"postgresql://postgres:pw-canary@127.0.0.1:{free_port()}/x",
            "MW_KAFKA_BOOTSTRAP": f"127.0.0.1:{free_port()}",
            "MW_RSS_FEEDS": "none",
        },
    )
    assert proc.returncode == 1
    assert "fail" in proc.stdout
    assert "pw-canary" not in proc.stdout + proc.stderr


def test_config_json_masks_secrets_and_invalid_config_names_the_variable() -> None:
    proc = mw(
        ["config", "--json"],
        {"MW_LLM_API_KEY": "sk-canary-xyz", "MW_DATABASE_URL": "postgresql://u:pw-canary@h/d"},
    )
    assert proc.returncode == 0, proc.stderr
    data = orjson.loads(proc.stdout)
    assert data["llm_api_key"] == "**********"
    assert "canary" not in proc.stdout
    bad = mw(["config"], {"MW_COOLDOWN_S": "-5"})
    assert bad.returncode == 2
    assert "MW_COOLDOWN_S" in bad.stdout + bad.stderr
