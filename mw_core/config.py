"""Market Watch configuration: one frozen pydantic-settings class.

Contract:
- Every setting is read from the environment with the prefix ``MW_`` (or an optional ``.env``
  file in the working directory) exactly once, at an entry point (`load_settings`), and the
  resulting `Settings` object is passed down. Library code never reads the environment.
- List settings (symbols, feeds, topics) accept a comma-separated string.
- Secrets are `SecretStr`; `Settings.safe_dict()` is the only view used for logs / status.
- Invalid values fail at start-up with `ConfigError`, whose message names the variable.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AliasChoices,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

ENV_PREFIX = "MW_"
SYMBOL_RE = re.compile(r"^[A-Z0-9]{2,20}$")
# The Dagster daemon's sensor loop runs every 5 s at best, and polling a feed faster than that is
# abuse of its publisher: shorter sensor intervals are raised to this.
MIN_SENSOR_INTERVAL_S = 5
SENSOR_INTERVALS = ("rss_poll_interval_s", "anomalies_poll_interval_s", "orphaned_runs_interval_s")

DEFAULT_SYMBOLS = ["BTCUSDT", "ETHUSDT", "SOLUSDT", "BNBUSDT", "XRPUSDT"]
DEFAULT_FEEDS = [
    "https://www.coindesk.com/arc/outboundfeeds/rss/",
    "https://cointelegraph.com/rss",
    "https://decrypt.co/feed",
]


class ConfigError(ValueError):
    """Raised when the configuration is invalid; the message names the offending variable."""


def _split_csv(value: Any) -> Any:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


def _parse_thresholds(value: Any) -> Any:
    """Parse ``"60:0.02,300:0.04"`` into ``{60: 0.02, 300: 0.04}``."""
    if isinstance(value, str):
        out: dict[int, float] = {}
        for part in _split_csv(value):
            window, _, threshold = part.partition(":")
            out[int(window)] = float(threshold)
        return out
    return value


def _parse_symbol_thresholds(value: Any) -> Any:
    """Parse ``"SOLUSDT:60:0.03,SOLUSDT:300:0.06"`` into ``{"SOLUSDT": {60: 0.03, 300: 0.06}}``."""
    if isinstance(value, str):
        out: dict[str, dict[int, float]] = {}
        for part in _split_csv(value):
            symbol, window, threshold = part.split(":")
            out.setdefault(symbol.strip().upper(), {})[int(window)] = float(threshold)
        return out
    return value


class Settings(BaseSettings):
    """All Market Watch settings. Environment variable = ``MW_`` + field name, upper case."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        env_ignore_empty=True,
        frozen=True,
    )

    # --- infrastructure -------------------------------------------------------------------
    state_dir: Path = Field(Path(".mw"), description="Directory for embedded servers' data, logs, pid files.")
    database_url: SecretStr | None = Field(
        None, description="PostgreSQL DSN. Unset: start the embedded PostgreSQL server."
    )
    kafka_bootstrap: str | None = Field(
        None, description="Kafka bootstrap servers. Unset: start the embedded Tansu broker (memory-only)."
    )
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="Kafka security protocol."
    )
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = Field(
        "PLAIN", description="Kafka SASL mechanism (when a SASL protocol is used)."
    )
    kafka_sasl_username: str | None = Field(None, description="Kafka SASL user name.")
    kafka_sasl_password: SecretStr | None = Field(None, description="Kafka SASL password.")
    kafka_ssl_cafile: Path | None = Field(
        None,
        description="PEM CA bundle that signed the brokers' certificates (SSL / SASL_SSL). Unset: system CAs.",
    )
    kafka_ssl_certfile: Path | None = Field(
        None,
        description="PEM client certificate (chain) for mutual TLS (SSL / SASL_SSL); the key may be in the "
        "same file or in MW_KAFKA_SSL_KEYFILE.",
    )
    kafka_ssl_keyfile: Path | None = Field(
        None, description="PEM private key of the client certificate (mutual TLS)."
    )
    kafka_ssl_password: SecretStr | None = Field(
        None, description="Password of an encrypted client private key (mutual TLS)."
    )
    kafka_replication_factor: int = Field(
        1,
        ge=1,
        le=32767,
        description="Replication factor of the topics Market Watch creates (1 locally, 3 recommended on "
        "a cluster). Above 1, producers are idempotent and topics get min.insync.replicas = min(2, RF-1).",
    )
    host: str = Field("127.0.0.1", description="Address every local server binds to.")
    broker_log: str = Field(
        "warn", description="Log filter (RUST_LOG) of the embedded Tansu broker, e.g. `info`, `debug`."
    )
    broker_max_memory_mb: int = Field(
        256,
        ge=32,
        description="Memory cap (RSS, MB) of the embedded Tansu broker: `mw up` rolls it over (drain, "
        "restart, resume; nothing lost) before it gets there.",
    )
    # Dagster's own name for it (dagster.yaml reads it too), hence no MW_ prefix.
    dagster_pg_url: SecretStr | None = Field(
        None,
        validation_alias=AliasChoices("DAGSTER_PG_URL", "dagster_pg_url"),
        description="Dagster run/event/schedule storage (SQLAlchemy URL). Unset: database `dagster` "
        "on the app's PostgreSQL server.",
    )

    # --- topics -----------------------------------------------------------------------------
    topic_prices: str = Field("prices", description="Kafka topic for ticks.")
    topic_news: str = Field("news", description="Kafka topic for headlines.")
    topic_alerts: str = Field("alerts", description="Kafka topic for anomaly alerts.")
    topic_dlq: str = Field("dlq", description="Kafka dead-letter topic.")
    prices_partitions: int = Field(6, ge=1, le=1024, description="Partitions of the prices topic.")
    consumer_group: str = Field("mw-processor", description="Processor consumer group.")

    # --- Binance ------------------------------------------------------------------------------
    symbols: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: list(DEFAULT_SYMBOLS), description="Symbols to watch (CSV)."
    )
    binance_ws_url: str = Field("wss://stream.binance.com:9443", description="Binance websocket base URL.")
    binance_rest_url: str = Field("https://api.binance.com", description="Binance REST base URL.")
    ws_rollover_s: float = Field(
        23 * 3600.0,
        gt=0,
        description="Open a new websocket connection after this long (Binance cuts at 24 h).",
    )
    ws_silence_timeout_s: float = Field(
        30.0, gt=0, description="Reconnect when no frame arrived for this long (half-open connections)."
    )
    reconnect_max_backoff_s: float = Field(60.0, gt=0, description="Cap of the reconnect backoff.")
    ingest_buffer_size: int = Field(10_000, ge=1, description="Bounded buffer between socket and producer.")

    # --- windows and anomaly detection --------------------------------------------------------
    windows_s: Annotated[list[int], NoDecode] = Field(
        default_factory=lambda: [60, 300, 900], description="Window lengths in seconds (CSV)."
    )
    thresholds: Annotated[dict[int, float], NoDecode] = Field(
        default_factory=lambda: {60: 0.02, 300: 0.03, 900: 0.05},
        description="Return thresholds per window, e.g. `60:0.02,300:0.03,900:0.05`.",
    )
    symbol_thresholds: Annotated[dict[str, dict[int, float]], NoDecode] = Field(
        default_factory=dict,
        description="Per-symbol overrides, e.g. `SOLUSDT:60:0.03,SOLUSDT:300:0.05`.",
    )
    cooldown_s: int = Field(60, ge=0, description="At most one alert per symbol per cooldown (event time).")
    scoring: Literal["fixed", "adaptive"] = Field(
        "fixed",
        description="Detection thresholds: `fixed` % per window, or `adaptive` = max(fixed %, z x the window's trailing volatility).",
    )
    adaptive_z: float = Field(
        4.0, gt=0, description="Adaptive scoring: how many standard deviations make a move abnormal."
    )
    adaptive_lookback_s: int = Field(
        14_400,
        ge=600,
        description="Adaptive scoring: trailing period of the volatility baseline (1-minute samples).",
    )
    adaptive_min_samples: int = Field(
        30, ge=2, description="Adaptive scoring: samples needed before the baseline can raise a threshold."
    )
    episodes_enabled: bool = Field(
        True, description="Alert episodes (open / escalate / close); off: one alert per detection."
    )
    # Severity = |ret| / threshold, so windows of different length compare on one scale.
    episode_escalation_step: float = Field(
        1.5, gt=1.0, description="An open episode alerts again at this multiple of the severity last alerted."
    )
    episode_quiet_s: int = Field(
        3600, gt=0, description="An episode closes after this long (event time) without a detection."
    )
    max_out_of_order_s: int = Field(
        5, ge=0, description="Ticks older than the symbol's newest by more than this go to the DLQ."
    )
    max_price: float = Field(1e9, gt=0, description="Prices above this are rejected as absurd.")

    # --- processor ----------------------------------------------------------------------------
    batch_max_records: int = Field(50_000, ge=1, description="Max records per processor batch.")
    batch_timeout_ms: int = Field(200, ge=1, description="Max wait to fill a processor batch.")
    metrics_port: int = Field(0, ge=0, le=65535, description="Prometheus + /healthz port (0 = free port).")

    # --- news and LLM -------------------------------------------------------------------------
    rss_feeds: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: list(DEFAULT_FEEDS),
        description="RSS/Atom feed URLs (CSV); `none` for no feeds.",
    )
    llm_provider: Literal["openai", "gemini", "ollama", "template"] = Field(
        "openai", description="LLM provider (OpenAI-compatible API)."
    )
    llm_model: str = Field("gpt-4o-mini", description="LLM model name.")
    llm_base_url: str | None = Field(
        None, description="OpenAI-compatible base URL (provider default if unset)."
    )
    llm_api_key: SecretStr | None = Field(None, description="LLM API key. Unset: template summaries.")
    llm_timeout_s: float = Field(20.0, gt=0, description="Per-request LLM timeout.")
    llm_max_calls_per_run: int = Field(50, ge=0, description="Cap on LLM calls per enrichment run.")
    llm_max_tokens_per_run: int = Field(50_000, ge=0, description="Cap on LLM tokens per enrichment run.")
    charts_per_run: int = Field(
        20, ge=0, description="Cap on alert price charts rendered per `alert_enrichments` run (0 = none)."
    )

    # --- notifications (mw_core.notify) -------------------------------------------------------
    notify_urls: SecretStr | None = Field(
        None,
        description="Notification channels: comma-separated Apprise URLs, each with an optional routing "
        "prefix, e.g. `[symbols=BTCUSDT\\|ETHUSDT;kinds=open\\|escalate;min_move=0.05]slack://...` "
        "(see mw_core.notify.routing). Secret: the URLs carry tokens.",
    )
    webhook_url: str | None = Field(
        None, description="Signed JSON webhook (our own, for machines); unset: no webhook channel."
    )
    webhook_secret: SecretStr | None = Field(
        None, description="HMAC-SHA256 key of the webhook's `X-MW-Signature` header."
    )
    public_dagster_url: str | None = Field(
        None, description="Public URL of the Dagster UI linked from notifications; unset: no link."
    )
    notify_max_attempts: int = Field(
        12, ge=1, description="Delivery attempts per event and channel before it goes to the DLQ."
    )
    notify_rate_per_min: float = Field(
        30.0, gt=0, description="Steady delivery rate per channel (messages per minute) after the burst."
    )
    notify_burst: int = Field(
        10, ge=1, description="Messages a channel may receive at once before the rate applies."
    )
    notify_circuit_failures: int = Field(
        5, ge=1, description="Consecutive failures after which a channel is parked (circuit open)."
    )
    notify_circuit_open_s: float = Field(
        30.0, gt=0, description="How long a parked channel waits before one probe delivery (half-open)."
    )
    notify_group: str = Field("mw-notify", description="Notifier consumer group on the alerts topic.")

    # --- Dagster sensors (read when the code location loads) ----------------------------------
    rss_poll_interval_s: int = Field(
        60, description="Seconds between `rss_poll_sensor` ticks (at least 5; shorter for tests, demos)."
    )
    anomalies_poll_interval_s: int = Field(
        30, description="Seconds between `new_anomalies_sensor` ticks (at least 5)."
    )
    orphaned_runs_interval_s: int = Field(
        60, description="Seconds between `orphaned_runs_sensor` ticks (at least 5)."
    )

    # --- logging ------------------------------------------------------------------------------
    log_format: Literal["console", "json"] = Field("console", description="Log format.")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Log level.")

    @field_validator("symbols", mode="before")
    @classmethod
    def _symbols_csv(cls, value: Any) -> Any:
        value = _split_csv(value)
        if isinstance(value, list):
            value = [str(v).strip().upper() for v in value]
        return value

    @field_validator("symbols")
    @classmethod
    def _symbols_valid(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("at least one symbol is required")
        bad = [s for s in value if not SYMBOL_RE.match(s)]
        if bad:
            raise ValueError(f"invalid symbol(s): {bad}")
        return list(dict.fromkeys(value))

    @field_validator("rss_feeds", "windows_s", mode="before")
    @classmethod
    def _csv(cls, value: Any) -> Any:
        if isinstance(value, str) and value.strip().lower() == "none":
            return []  # an empty variable means "default"; `none` switches the list off
        return _split_csv(value)

    @field_validator("windows_s")
    @classmethod
    def _windows_valid(cls, value: list[int]) -> list[int]:
        if not value or any(w <= 0 for w in value):
            raise ValueError("window lengths must be positive seconds")
        return sorted(set(value))

    @field_validator("thresholds", mode="before")
    @classmethod
    def _thresholds_csv(cls, value: Any) -> Any:
        return _parse_thresholds(value)

    @field_validator("symbol_thresholds", mode="before")
    @classmethod
    def _symbol_thresholds_csv(cls, value: Any) -> Any:
        return _parse_symbol_thresholds(value)

    @field_validator(*SENSOR_INTERVALS, mode="before")
    @classmethod
    def _whole_seconds(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, str):
            if not value.strip():  # blank (even spaces): the default
                return cls.model_fields[str(info.field_name)].default
            try:
                return int(value.strip())
            except ValueError:
                raise ValueError(f"must be a whole number of seconds, got {value!r}") from None
        return value

    @field_validator(*SENSOR_INTERVALS)
    @classmethod
    def _at_least_min_interval(cls, value: int) -> int:
        return max(MIN_SENSOR_INTERVAL_S, value)

    @model_validator(mode="after")
    def _thresholds_cover_windows(self) -> Settings:
        missing = [w for w in self.windows_s if w not in self.thresholds]
        if missing:
            raise ValueError(f"thresholds: no threshold for window(s) {missing}")
        for mapping in [self.thresholds, *self.symbol_thresholds.values()]:
            if any(not (0 < t < 10) for t in mapping.values()):
                raise ValueError("thresholds: each threshold must be a fraction in (0, 10)")
        return self

    # --- derived views ------------------------------------------------------------------------
    def threshold_for(self, symbol: str, window_s: int) -> float:
        """The return threshold for `symbol` over `window_s`, honouring per-symbol overrides."""
        return self.symbol_thresholds.get(symbol, {}).get(window_s, self.thresholds[window_s])

    def threshold_table(self) -> dict[str, dict[int, float]]:
        """Per-symbol override table (symbols without overrides use `thresholds`)."""
        return {s: dict(m) for s, m in self.symbol_thresholds.items()}

    @property
    def llm_enabled(self) -> bool:
        return self.llm_provider != "template" and (
            self.llm_api_key is not None or self.llm_provider == "ollama"
        )

    def safe_dict(self) -> dict[str, Any]:
        """Settings for logs and status output: secrets masked, passwords removed from URLs."""
        out: dict[str, Any] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if name in ("database_url", "dagster_pg_url"):
                out[name] = redact_url(value.get_secret_value()) if value else None
            elif name == "webhook_url":
                out[name] = redact_url(value) if value else None
            elif isinstance(value, SecretStr):
                out[name] = "**********"
            elif isinstance(value, Path):
                out[name] = str(value)
            else:
                out[name] = value
        return out


def env_var(name: str) -> str:
    """The environment variable of `Settings` field `name` (``MW_`` + name, unless aliased)."""
    alias = Settings.model_fields[name].validation_alias
    if isinstance(alias, AliasChoices):
        return str(alias.choices[0])
    return str(alias) if isinstance(alias, str) else f"{ENV_PREFIX}{name.upper()}"


def markdown_table() -> str:
    """The configuration table of the README, generated from the `Settings` fields."""
    rows = ["| variable | default | description |", "|---|---|---|"]
    for name, info in Settings.model_fields.items():
        if info.default_factory is not None:
            default: Any = info.default_factory()  # type: ignore[call-arg]
        else:
            default = info.default
        if isinstance(default, list):
            shown = ",".join(str(v) for v in default)
        elif isinstance(default, dict):
            shown = ",".join(f"{k}:{v}" for k, v in default.items())
        elif default is None:
            shown = "(unset)"
        else:
            shown = str(default)
        shown = shown.replace("|", "\\|")
        rows.append(f"| `{env_var(name)}` | `{shown}` | {info.description or ''} |")
    return "\n".join(rows)


_USERINFO_PASSWORD = re.compile(r"(://[^:/@?#]*):[^/?#]*@")  # greedy: up to the last @ of the authority
_QUERY_SECRET = re.compile(r"([?&](?:password|passwd|pwd|sslpassword|secret|token|api_key)=)[^&#]*", re.I)


def redact_url(url: str) -> str:
    """Remove secrets from a URL: ``user:pw@``, ``:pw@`` and ``?password=...`` (libpq/asyncpg forms)."""
    return _QUERY_SECRET.sub(r"\1***", _USERINFO_PASSWORD.sub(r"\1:***@", url))


def load_settings(**overrides: Any) -> Settings:
    """Build `Settings` from the environment (+ overrides), turning errors into `ConfigError`.

    The error message names the environment variable, e.g. ``MW_SYMBOLS: invalid symbol(s)``.
    """
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            loc = err.get("loc") or ()
            msg = str(err.get("msg"))
            field = str(loc[0]) if loc else ""
            if not field:  # model-level validator: the message starts with "<field>: ..."
                match = re.search(r"(?:Value error, )?(\w+):", msg)
                field = match.group(1) if match else "settings"
            var = f"{ENV_PREFIX}{field.upper()}" if field in Settings.model_fields else field
            lines.append(f"{var}: {msg}")
        raise ConfigError("invalid configuration: " + "; ".join(lines)) from None
    except (ValueError, TypeError) as exc:
        # pydantic-settings raises SettingsError (a ValueError) when a complex value fails to parse.
        msg = str(exc)
        match = re.search(r'field "(\w+)"', msg)
        var = f"{ENV_PREFIX}{match.group(1).upper()}" if match else "settings"
        raise ConfigError(f"invalid configuration: {var}: {msg}") from None
