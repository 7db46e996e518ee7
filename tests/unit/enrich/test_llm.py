"""LLM client construction (no network: building a client opens no socket)."""

from __future__ import annotations

from typing import Any

import pytest

from mw_core.config import Settings
from mw_core.enrich.llm import PROVIDER_BASE_URLS, LLMClient, PermanentLLMError

pytestmark = pytest.mark.unit

SECRET = "sk-unit-SECRET-4242"


def settings(**overrides: Any) -> Settings:
    base: dict[str, Any] = {"llm_provider": "openai", "llm_model": "gpt-4o-mini", "database_url": None}
    return Settings(**{**base, **overrides})


@pytest.mark.parametrize("provider", ["openai", "gemini", "ollama"])
def test_provider_default_base_urls(provider: str) -> None:
    key = None if provider == "ollama" else SECRET
    client = LLMClient.from_settings(settings(llm_provider=provider, llm_api_key=key))
    assert client is not None
    with client:
        assert client.base_url == PROVIDER_BASE_URLS[provider]
        assert client.model == "gpt-4o-mini"


def test_base_url_override_and_timeout() -> None:
    client = LLMClient.from_settings(
        settings(llm_api_key=SECRET, llm_base_url="http://127.0.0.1:9/v1", llm_timeout_s=1.5), max_attempts=5
    )
    assert client is not None
    with client:
        assert client.base_url == "http://127.0.0.1:9/v1"
        assert client.timeout_s == 1.5
        assert client.max_attempts == 5


@pytest.mark.parametrize(
    "overrides",
    [
        {"llm_provider": "template", "llm_api_key": SECRET},
        {"llm_provider": "openai"},
        {"llm_provider": "gemini"},
    ],
)
def test_disabled_settings_give_no_client(overrides: dict[str, Any]) -> None:
    assert LLMClient.from_settings(settings(**overrides)) is None


def test_repr_hides_key_and_url_credentials() -> None:
    client = LLMClient(base_url="https://user:pw@llm.example/v1?key=" + SECRET, api_key=SECRET, model="m")
    with client:
        text = repr(client)
    assert SECRET not in text
    assert "pw" not in text
    assert "llm.example" in text


def test_errors_carry_codes_not_bodies() -> None:
    err = PermanentLLMError("unauthorized", status=401)
    assert str(err) == "unauthorized (HTTP 401)"
    assert err.fatal
    assert not PermanentLLMError("bad_request", status=400).fatal


def test_invalid_attempts_rejected() -> None:
    with pytest.raises(ValueError, match="max_attempts"):
        LLMClient(base_url="http://127.0.0.1:9/v1", api_key=None, model="m", max_attempts=0)
