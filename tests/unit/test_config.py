"""Settings: env parsing, validation naming the variable, secrets never shown."""

from __future__ import annotations

import pytest

from mw_core.config import ConfigError, Settings, load_settings

pytestmark = pytest.mark.unit


def test_defaults() -> None:
    s = Settings()
    assert s.symbols == ["BTCUSDT", "ETHUSDT", "SOLUSDT", "BNBUSDT", "XRPUSDT"]
    assert s.windows_s == [60, 300, 900]
    assert s.cooldown_s == 60
    assert (s.topic_prices, s.topic_news, s.topic_alerts, s.topic_dlq) == ("prices", "news", "alerts", "dlq")


def test_csv_lists_and_overrides_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MW_SYMBOLS", "btcusdt, ethusdt,,BTCUSDT")
    monkeypatch.setenv("MW_THRESHOLDS", "60:0.01,300:0.02,900:0.04")
    monkeypatch.setenv("MW_SYMBOL_THRESHOLDS", "SOLUSDT:60:0.03")
    monkeypatch.setenv("MW_RSS_FEEDS", "http://a/rss, http://b/atom")
    s = load_settings()
    assert s.symbols == ["BTCUSDT", "ETHUSDT"]
    assert s.threshold_for("BTCUSDT", 60) == 0.01
    assert s.threshold_for("SOLUSDT", 60) == 0.03
    assert s.threshold_for("SOLUSDT", 300) == 0.02
    assert s.rss_feeds == ["http://a/rss", "http://b/atom"]


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("MW_SYMBOLS", "BTC-USDT"),
        ("MW_COOLDOWN_S", "soon"),
        ("MW_THRESHOLDS", "60:0.02"),  # no threshold for 300/900
        ("MW_LLM_PROVIDER", "skynet"),
        ("MW_PRICES_PARTITIONS", "0"),
    ],
)
def test_invalid_values_fail_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, var: str, value: str
) -> None:
    monkeypatch.setenv(var, value)
    with pytest.raises(ConfigError) as err:
        load_settings()
    assert var in str(err.value)


def test_secrets_are_masked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MW_LLM_API_KEY", "sk-canary-123")
    monkeypatch.setenv("MW_DATABASE_URL", "postgresql://mw:pw-canary-456@db:5432/marketwatch")
    s = load_settings()
    text = repr(s) + str(s.safe_dict())
    assert "sk-canary-123" not in text
    assert "pw-canary-456" not in text
    assert s.safe_dict()["database_url"] == "postgresql://mw:***@db:5432/marketwatch"
