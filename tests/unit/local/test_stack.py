"""The concrete stack: specs in start order and their wiring (nothing is started)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from mw_core.local.specs import ComponentSpec, ManagedSpec, StepSpec

pytestmark = pytest.mark.unit


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("MW_") or key == "DAGSTER_PG_URL":
            monkeypatch.delenv(key)


def test_stack_order_and_wiring_embedded(tmp_path: Path, clean_env: None) -> None:
    from mw_core.config import load_settings
    from mw_core.local.stack import Stack, StackOptions

    settings = load_settings(_env_file=None, state_dir=tmp_path / "state")
    stack = Stack(settings, StackOptions(replay=("a.csv",), speed="60", loop=True, dagster_port=3999))
    specs = stack.specs()
    assert [s.name for s in specs] == [
        "postgres",
        "kafka",
        "schema",
        "dagster-webserver",
        "dagster-daemon",
        "replay",
        "ingest",
        "process",
        "notify",
    ]
    by_name = {s.name: s for s in specs}
    assert isinstance(by_name["postgres"], ManagedSpec)
    assert isinstance(by_name["schema"], StepSpec)

    web = by_name["dagster-webserver"]
    assert isinstance(web, ComponentSpec)
    assert "dagster dev" not in " ".join(web.argv)  # ignores SIGTERM from non-interactive shells
    assert web.argv[0].endswith("dagster-webserver") or "dagster_webserver" in web.argv
    assert list(web.argv[1:5]) == ["-h", "127.0.0.1", "-p", "3999"]
    assert callable(web.health)  # GraphQL: every code location LOADED (server_info answers earlier)
    assert web.health() is False  # nothing listens on :3999
    daemon = by_name["dagster-daemon"]
    assert isinstance(daemon, ComponentSpec)
    assert "run" in daemon.argv
    replay = by_name["replay"]
    assert isinstance(replay, ComponentSpec)
    assert {"replay-server", "a.csv", "--loop", "60"} <= set(replay.argv)

    # values resolved while starting reach the children through MW_* variables
    stack.app_db_url = "postgresql://postgres@127.0.0.1:5555/marketwatch"
    stack.dagster_pg_url = "postgresql+psycopg2://postgres@127.0.0.1:5555/dagster"
    stack.kafka_bootstrap = "127.0.0.1:9999"
    (tmp_path / "state").mkdir()
    stack.replay_ready.write_text(
        json.dumps({"ws_url": "ws://127.0.0.1:7", "rest_url": "http://127.0.0.1:7"})
    )
    ingest_env = stack.ingest_env()
    assert ingest_env["MW_DATABASE_URL"] == stack.app_db_url
    assert ingest_env["MW_KAFKA_BOOTSTRAP"] == "127.0.0.1:9999"
    assert ingest_env["MW_BINANCE_WS_URL"] == "ws://127.0.0.1:7"
    assert ingest_env["MW_BINANCE_REST_URL"] == "http://127.0.0.1:7"
    assert ingest_env["MW_METRICS_PORT"] == str(stack.ingest_port)
    denv = stack.dagster_env()
    assert denv["DAGSTER_HOME"] == str(tmp_path / "state" / "dagster")
    assert denv["DAGSTER_PG_URL"].startswith("postgresql+psycopg2://")
    assert stack.meta()["dagster_url"] == "http://127.0.0.1:3999"


def test_stack_external_servers_and_no_passwords_in_status(tmp_path: Path, clean_env: None) -> None:
    from mw_core.config import load_settings
    from mw_core.local.stack import Stack

    settings = load_settings(
        _env_file=None,
        state_dir=tmp_path,
        database_url="postgresql://app:s3cret@db.example:5432/marketwatch",
        kafka_bootstrap="kafka.example:9093",
    )
    stack = Stack(settings)
    specs = stack.specs()
    assert [s.name for s in specs][:3] == ["postgres", "kafka", "schema"]
    assert all(isinstance(s, StepSpec) for s in specs[:3])
    assert "replay" not in [s.name for s in specs]
    assert "s3cret" not in json.dumps(stack.meta())
    assert stack.meta()["database_url"] == "postgresql://app:***@db.example:5432/marketwatch"
    assert stack.service_env()["MW_DATABASE_URL"].endswith(":s3cret@db.example:5432/marketwatch")


def test_url_helpers() -> None:
    from mw_core.local.banners import durable
    from mw_core.local.pg_urls import database_name, libpq_url, sqlalchemy_url, with_database

    url = "postgresql://u:p@h:5432/marketwatch?sslmode=require"
    assert with_database(url, "dagster") == "postgresql://u:p@h:5432/dagster?sslmode=require"
    assert sqlalchemy_url(url).startswith("postgresql+psycopg2://u:p@h")
    assert libpq_url(sqlalchemy_url(url)) == url
    assert database_name(url) == "marketwatch"
    assert durable(b'{"status": "ok", "stored": 3, "last_commit_age_s": 0.2}')
    assert not durable(b'{"status": "ok", "stored": 0, "last_commit_age_s": null}')
    assert not durable(b"not json")
