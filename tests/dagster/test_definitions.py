"""Tier 1: the code location loads, with the expected assets, checks, jobs, schedules and sensors."""

from __future__ import annotations

import ast
from pathlib import Path

import dagster as dg
import pytest

from mw_core.config import MIN_SENSOR_INTERVAL_S, ConfigError, load_settings
from mw_dagster.definitions import build_resources, defs
from mw_dagster.resources import LLMResource, PostgresResource, build_settings
from sensors import build_sensors

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


def test_definitions_validate_loadable() -> None:
    dg.Definitions.validate_loadable(defs)


def test_the_code_location_module_holds_one_definitions() -> None:
    """Dagster refuses a code location module with several module-level Definitions."""
    import mw_dagster.definitions as location

    assert [name for name, value in vars(location).items() if isinstance(value, dg.Definitions)] == ["defs"]


def test_assets_groups_and_lineage() -> None:
    graph = defs.resolve_asset_graph()
    groups = {k.to_user_string(): graph.get(k).group_name for k in graph.get_all_asset_keys()}
    assert groups == {
        "db_schema": "infra",
        "service_health": "infra",
        "prices": "markets",
        "anomalies": "markets",
        "price_anomalies": "markets",
        "market_backtest": "markets",
        "market_overview": "markets",
        "market_report": "markets",
        "headlines": "news",
        "alert_events": "alerts",
        "alert_enrichments": "alerts",
        "notification_deliveries": "alerts",
    }

    def parents(key: str) -> set[str]:
        return {p.to_user_string() for p in graph.get(dg.AssetKey(key)).parent_keys}

    # Honest lineage: each asset depends on the tables it reads. The stream writes `anomalies` (from
    # the ticks it also stores in `prices`); the batch `price_anomalies` recomputes them from
    # `prices` and compares with `anomalies`; the stream turns `anomalies` into episode events
    # (`alert_events`); enrichment reads the alerts there, `headlines`, and `prices` for its charts;
    # the overview and the daily report chart `prices` with the episode events.
    assert parents("anomalies") == {"prices"}
    assert parents("price_anomalies") == {"prices", "anomalies"}
    assert parents("market_backtest") == {"prices"}
    assert parents("alert_events") == {"anomalies"}
    assert parents("alert_enrichments") == {"alert_events", "headlines", "prices"}
    assert parents("notification_deliveries") == {"alert_events"}
    assert parents("market_overview") == {"prices", "alert_events"}
    assert parents("market_report") == {"prices", "alert_events"}
    assert graph.get(dg.AssetKey("market_overview")).partitions_def is None  # "now", not a day
    assert not graph.get(dg.AssetKey("alert_events")).is_materializable  # written by the stream
    assert not graph.get(dg.AssetKey("anomalies")).is_materializable  # written by the stream
    anomalies = graph.get(dg.AssetKey("price_anomalies"))
    assert anomalies.partitions_def is not None
    assert anomalies.partitions_def.get_partition_keys_in_range(
        dg.PartitionKeyRange("2024-08-05", "2024-08-06")
    ) == ["2024-08-05", "2024-08-06"]
    assert graph.get(dg.AssetKey("market_report")).partitions_def == anomalies.partitions_def
    spec = defs.get_assets_def("alert_enrichments").op.retry_policy
    assert spec is not None and spec.max_retries == 3 and spec.backoff == dg.Backoff.EXPONENTIAL


def test_checks_jobs_schedules_sensors() -> None:
    graph = defs.resolve_asset_graph()
    checks = {(k.asset_key.to_user_string(), k.name) for k in graph.asset_check_keys}
    assert checks == {
        ("prices", "prices_coverage"),
        ("prices", "prices_staleness"),
        ("prices", "prices_duplicate_rate"),
        ("headlines", "headlines_freshness"),
        ("headlines", "headlines_duplicate_rate"),
        ("price_anomalies", "price_anomalies_agreement"),
        ("notification_deliveries", "notification_delivery_health"),
    }
    repo = defs.get_repository_def()
    jobs = {
        "price_anomalies_job",
        "market_overview_job",
        "market_report_job",
        "headlines_job",
        "alert_enrichments_job",
        "maintenance_job",
        "quality_checks_job",
        "delivery_health_job",
    }
    assert jobs <= set(repo.job_names)
    assert {s.name for s in repo.schedule_defs} == {
        "price_anomalies_schedule",
        "market_overview_schedule",
        "market_report_schedule",
        "maintenance_schedule",
        "quality_checks_schedule",
        "delivery_health_schedule",
    }

    sensors = {s.name: s for s in repo.sensor_defs}
    assert set(sensors) == {
        "rss_poll_sensor",
        "new_anomalies_sensor",
        "service_health_sensor",
        "orphaned_runs_sensor",
    }
    assert sensors["rss_poll_sensor"].minimum_interval_seconds == 60
    assert sensors["new_anomalies_sensor"].minimum_interval_seconds == 30
    assert repo.get_schedule_def("price_anomalies_schedule").job_name == "price_anomalies_job"
    overview = repo.get_schedule_def("market_overview_schedule")
    assert (overview.job_name, overview.cron_schedule) == ("market_overview_job", "*/15 * * * *")
    assert overview.default_status == dg.DefaultScheduleStatus.RUNNING
    assert repo.get_schedule_def("market_report_schedule").job_name == "market_report_job"


def test_secrets_come_from_env_vars() -> None:
    env = {"MW_DATABASE_URL": "postgresql://x@h/d", "MW_LLM_API_KEY": "sk-test"}
    resources = build_resources(load_settings(llm_api_key="sk-test"), env)
    snapshot = {name: r._get_non_default_public_field_values() for name, r in resources.items()}  # type: ignore[attr-defined]
    assert isinstance(snapshot["postgres"]["database_url"], dg.EnvVar)
    assert isinstance(snapshot["llm"]["api_key"], dg.EnvVar)
    # Unset optional variables stay unset instead of failing every run.
    assert snapshot["kafka"].get("bootstrap") is None


def test_dagster_code_has_no_event_loop_tricks() -> None:
    """CONTRIBUTING.md: asyncio stays in mw_core; Dagster code only calls asyncio.run."""
    banned = {"get_event_loop", "new_event_loop", "run_until_complete", "set_event_loop", "nest_asyncio"}
    offenders = []
    for path in [*(ROOT / "mw_dagster").rglob("*.py"), *(ROOT / "sensors").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            name = getattr(node, "attr", None) or getattr(node, "id", None)
            if name in banned:
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")  # type: ignore[attr-defined]
    assert offenders == []


def test_bad_configuration_fails_without_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """Retry policies are for transient errors: a bad MW_* variable fails the run once."""
    monkeypatch.setenv("MW_SYMBOLS", "not a symbol!")
    with pytest.raises(dg.Failure, match="MW_SYMBOLS") as info:
        build_settings(postgres=PostgresResource(database_url="postgresql://x@h/d"))
    assert info.value.allow_retries is False


def test_dagster_code_is_sync_and_driver_free() -> None:
    """CONTRIBUTING.md: SQL, coroutines and drivers live in `mw_core`; Dagster code is a sync wrapper.

    `mw_dagster` and `sensors` define no coroutine, await nothing, import no database/Kafka/feed
    driver, and use `asyncio` only as ``asyncio.run`` (the seam into `mw_core`).
    """
    drivers = {"asyncpg", "aiokafka", "websockets", "feedparser", "psycopg2"}
    offenders = []
    for path in [*(ROOT / "mw_dagster").rglob("*.py"), *(ROOT / "sensors").rglob("*.py")]:
        where = path.relative_to(ROOT)
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.AsyncFunctionDef | ast.Await | ast.AsyncWith | ast.AsyncFor):
                offenders.append(f"{where}:{node.lineno}: {type(node).__name__}")
            elif isinstance(node, ast.Import):
                roots = {a.name.split(".")[0] for a in node.names}
                offenders.extend(f"{where}:{node.lineno}: import {r}" for r in roots & drivers)
            elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in drivers:
                offenders.append(f"{where}:{node.lineno}: from {node.module}")
            elif (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id == "asyncio"
                and node.attr != "run"
            ):
                offenders.append(f"{where}:{node.lineno}: asyncio.{node.attr}")
    assert offenders == []


def test_sensor_intervals_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """MW_*_INTERVAL_S shorten sensor ticks (tests, demos), never below the daemon's 5 s loop."""
    monkeypatch.setenv("MW_RSS_POLL_INTERVAL_S", " ")
    monkeypatch.setenv("MW_ANOMALIES_POLL_INTERVAL_S", "7")
    monkeypatch.setenv("MW_ORPHANED_RUNS_INTERVAL_S", "1")
    sensors = {s.name: s.minimum_interval_seconds for s in build_sensors(load_settings())}
    assert sensors == {
        "rss_poll_sensor": 60,
        "new_anomalies_sensor": 7,
        "service_health_sensor": 60,
        "orphaned_runs_sensor": MIN_SENSOR_INTERVAL_S,
    }
    assert MIN_SENSOR_INTERVAL_S == 5
    monkeypatch.setenv("MW_RSS_POLL_INTERVAL_S", "fast")
    with pytest.raises(ConfigError, match=r"MW_RSS_POLL_INTERVAL_S: .*must be a whole number"):
        load_settings()


def test_resources_take_their_values_from_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """One source of defaults: the resources' values are the `Settings` the entry point built."""
    settings = load_settings(llm_model="m-1", llm_max_tokens_per_run=7, llm_timeout_s=3.0)
    llm = build_resources(settings, {})["llm"]
    assert isinstance(llm, LLMResource)
    assert (llm.model, llm.max_tokens_per_run, llm.timeout_s, llm.provider) == ("m-1", 7, 3.0, "template")
    # The resource's own defaults are Settings' defaults too (no second copy of them).
    default = load_settings(llm_provider="template")
    assert (LLMResource().model, LLMResource().max_calls_per_run) == (
        default.llm_model,
        default.llm_max_calls_per_run,
    )
    # A blank variable (`MW_LLM_MAX_CALLS_PER_RUN=` in a .env) is unset, not a broken code location.
    monkeypatch.setenv("MW_LLM_MAX_CALLS_PER_RUN", "")
    blank = build_resources(load_settings(), {"MW_LLM_MAX_CALLS_PER_RUN": ""})["llm"]
    assert isinstance(blank, LLMResource) and blank.max_calls_per_run == default.llm_max_calls_per_run


def test_rss_resource_none_switches_feeds_off() -> None:
    from mw_dagster.resources import RSSResource

    assert RSSResource(feeds="none").settings_overrides() == {"rss_feeds": []}
    assert RSSResource(feeds="NONE").feed_list == []
    assert RSSResource(feeds="http://a/rss, http://b/atom").feed_list == ["http://a/rss", "http://b/atom"]
