"""`mw init`'s waiting: transient errors retried until the deadline, fatal ones raised at once."""

from __future__ import annotations

import time

import asyncpg
import pytest

from mw_core.adapters.retry import DB_TRANSIENT
from mw_core.config import load_settings
from mw_core.local.ports import free_port
from mw_core.local.provision import initialize, when_reachable

pytestmark = pytest.mark.unit


@pytest.fixture(autouse=True)
def no_configured_servers(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("MW_DATABASE_URL", "MW_KAFKA_BOOTSTRAP", "DAGSTER_PG_URL"):
        monkeypatch.delenv(var, raising=False)


def test_unreachable_server_gives_up_after_the_wait_with_a_redacted_message() -> None:
    settings = load_settings(
        _env_file=None,
        database_url=f"postgresql://app:pw-canary@127.0.0.1:{free_port()}/marketwatch",
        kafka_bootstrap=f"127.0.0.1:{free_port()}",
    )
    t0 = time.monotonic()
    with pytest.raises(RuntimeError, match=r"PostgreSQL at .* not reachable after 1s") as info:
        initialize(settings, wait_s=1.0)
    assert time.monotonic() - t0 < 10
    assert "pw-canary" not in str(info.value)
    assert isinstance(info.value.__cause__, OSError)


def test_fatal_error_is_raised_at_once() -> None:
    calls = 0

    def wrong_password() -> None:
        nonlocal calls
        calls += 1
        raise asyncpg.InvalidPasswordError("password authentication failed for user app")

    with pytest.raises(asyncpg.InvalidPasswordError):
        when_reachable(wrong_password, what="PostgreSQL", retry_on=DB_TRANSIENT, wait_s=30)
    assert calls == 1


def test_initialize_needs_configured_servers() -> None:
    with pytest.raises(ValueError, match="MW_DATABASE_URL and MW_KAFKA_BOOTSTRAP"):
        initialize(load_settings(_env_file=None))
