"""docker-compose.yml, Dockerfile and .env.example stay correct and in step with mw_core.config.

No Docker engine needed: the files are parsed and checked statically.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from mw_core.config import Settings, env_var

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
DOCKERFILE = ROOT / "Dockerfile"

INFRA = {"timescaledb", "kafka"}
APP_SERVICES = {"init", "dagster-webserver", "dagster-daemon", "ingest", "processor", "notify"}
DAGSTER_SERVICES = {"dagster-webserver", "dagster-daemon", "init"}
# Values that must differ inside containers; every other MW_* variable keeps the config default.
CONTAINER_OVERRIDES = {
    "MW_STATE_DIR",
    "MW_DATABASE_URL",
    "MW_KAFKA_BOOTSTRAP",
    "MW_HOST",
    "MW_METRICS_PORT",
    "MW_LOG_FORMAT",
    "DAGSTER_PG_URL",
}
# Settings only the Dagster services (and the init job) need: the services never get them.
DAGSTER_ONLY = {"DAGSTER_PG_URL"}
SECRET_PARTS = {"PASSWORD", "SECRET", "TOKEN", "CREDENTIALS"}
VAR_REF = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?P<op>:?[-?+])?")


def is_secret(name: str) -> bool:
    return bool(SECRET_PARTS & set(name.split("_"))) or name.endswith("API_KEY")


def settings_vars() -> list[str]:
    return [env_var(name) for name in Settings.model_fields]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


def env_of(service: dict[str, Any]) -> dict[str, Any]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.split("=", 1) if "=" in item else (item, None) for item in env)
    return dict(env)


def resolve_defaults(value: str) -> str:
    """Interpolate ``${VAR:-default}`` with its default (innermost first), as compose would with VAR unset.

    ``${VAR:?message}`` becomes the empty string (compose would fail; the message is not a value).
    """
    pattern = re.compile(r"\$\{[A-Za-z_][A-Za-z0-9_]*(?:(:?[-?])([^${}]*))?\}")
    while True:
        new = pattern.sub(lambda m: "" if (m.group(1) or "").endswith("?") else (m.group(2) or ""), value)
        if new == value:
            return new
        value = new


def env_example() -> dict[str, str]:
    """Variables documented in .env.example (set or commented out) -> value shown."""
    out: dict[str, str] = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        m = re.match(r"^#?\s?([A-Z][A-Z0-9_]*)=(.*)$", line)
        if m:
            out[m.group(1)] = m.group(2)
    return out


def test_services_present(services: dict[str, Any]) -> None:
    assert set(services) >= INFRA | APP_SERVICES
    assert set(services) == INFRA | APP_SERVICES, "update this test when adding a service"


def test_every_image_is_pinned(services: dict[str, Any]) -> None:
    for name, svc in services.items():
        image = resolve_defaults(str(svc.get("image", "")))
        assert image, f"{name}: no image (app services build market-watch:<tag>)"
        repo, _, tag = image.rpartition(":")
        assert repo and "/" not in tag, f"{name}: image {image!r} is untagged"
        assert tag not in ("", "latest", "stable", "edge"), f"{name}: image {image!r} is not pinned"
        assert re.search(r"\d", tag), f"{name}: tag {tag!r} names no version"
    assert services["timescaledb"]["image"].startswith("timescale/timescaledb:")
    assert "-pg16" in services["timescaledb"]["image"]
    assert services["kafka"]["image"].startswith("apache/kafka:")


def test_app_services_share_one_image_built_once_from_the_dockerfile(services: dict[str, Any]) -> None:
    """One `build:` only: several services building one tag in parallel failed ("already exists")."""
    images = {services[s]["image"] for s in APP_SERVICES}
    assert len(images) == 1
    builders = [name for name, svc in services.items() if "build" in svc]
    assert builders == ["init"], builders
    assert services["init"]["build"]["context"] == "."


def test_dockerfile_is_slim_pinned_and_non_root() -> None:
    text = DOCKERFILE.read_text()
    bases = re.findall(r"^ARG PYTHON_IMAGE=(\S+)", text, flags=re.M)
    assert bases and bases[0].startswith("python:3.11-slim")
    users = re.findall(r"^USER (\S+)", text, flags=re.M)
    assert users and users[-1] not in ("root", "0")
    assert re.search(r'^CMD \["mw"\]', text, flags=re.M)
    assert "pip install -c constraints.txt ." in text


def test_healthchecks_on_infrastructure(services: dict[str, Any]) -> None:
    assert "pg_isready" in " ".join(services["timescaledb"]["healthcheck"]["test"])
    assert "kafka-broker-api-versions" in " ".join(services["kafka"]["healthcheck"]["test"])
    for name in ("dagster-webserver", "ingest", "processor", "notify"):
        assert "healthcheck" in services[name], name


def test_kafka_runs_kraft_with_one_broker_and_a_volume(services: dict[str, Any]) -> None:
    env = env_of(services["kafka"])
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert str(env["KAFKA_NODE_ID"]) == "1"
    assert any(v.endswith(":/var/lib/kafka/data") for v in services["kafka"]["volumes"])
    assert any(v.endswith(":/var/lib/postgresql/data") for v in services["timescaledb"]["volumes"])


def test_depends_on_conditions(services: dict[str, Any]) -> None:
    allowed = {"service_healthy", "service_completed_successfully", "service_started"}
    for name in APP_SERVICES:
        deps = services[name]["depends_on"]
        assert isinstance(deps, dict), f"{name}: depends_on needs conditions"
        for dep, cond in deps.items():
            assert cond["condition"] in allowed, (name, dep)
            if dep in INFRA:
                assert cond["condition"] == "service_healthy", (name, dep)
    assert services["init"]["depends_on"].keys() == INFRA
    for name in APP_SERVICES - {"init"}:
        assert services[name]["depends_on"]["init"]["condition"] == "service_completed_successfully"
    for name in ("processor", "notify", "dagster-webserver", "dagster-daemon"):
        assert "timescaledb" in services[name]["depends_on"]
    for name in ("ingest", "processor", "notify"):
        assert "kafka" in services[name]["depends_on"]


def test_no_default_passwords() -> None:
    text = COMPOSE.read_text()
    refs = list(VAR_REF.finditer(text))
    assert refs
    for m in refs:
        name, op = m.group("name"), m.group("op")
        if "PASSWORD" in name:
            assert op == ":?", f"${{{name}}} must use :? so compose fails fast without it"
        elif is_secret(name):
            assert op in (None, ":?", "?"), f"secret {name} must not get a default"
    data = yaml.safe_load(text)
    for svc_name, svc in data["services"].items():
        for key, value in env_of(svc).items():
            if is_secret(key) and value is not None:
                assert "${" in str(value), f"{svc_name}: {key} has a literal value"
    # .env.example never ships a secret value
    for key, value in env_example().items():
        if is_secret(key) and not value.startswith("<"):
            assert value in ("", "/dev/null"), f".env.example: {key} has a value"
    assert env_example()["POSTGRES_PASSWORD"] == ""
    assert re.search(r"^POSTGRES_PASSWORD=$", ENV_EXAMPLE.read_text(), flags=re.M), "must be uncommented"


def test_env_example_documents_every_setting() -> None:
    documented = env_example()
    missing = [v for v in settings_vars() if v not in documented]
    assert missing == [], f"add to .env.example: {missing}"
    for extra in ("DAGSTER_PG_URL", "POSTGRES_PASSWORD", "POSTGRES_USER", "POSTGRES_DB", "POSTGRES_SSLMODE"):
        assert extra in documented, extra
    unknown = [v for v in documented if v.startswith("MW_") and v not in settings_vars()]
    assert unknown == [], f"not a setting any more: {unknown}"


def test_env_example_values_are_the_config_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each documented MW_* value parses to the Settings default (container overrides excepted)."""
    for key in list(os.environ):
        if key.startswith("MW_"):
            monkeypatch.delenv(key)
    defaults = Settings(_env_file=None)  # type: ignore[call-arg]
    for var, value in env_example().items():
        if not var.startswith("MW_") or var in CONTAINER_OVERRIDES or value == "":
            continue
        monkeypatch.setenv(var, value)
        parsed = Settings(_env_file=None)  # type: ignore[call-arg]
        monkeypatch.delenv(var)
        field = var.removeprefix("MW_").lower()
        assert getattr(parsed, field) == getattr(defaults, field), f".env.example {var}={value}"


def test_every_setting_is_passed_to_the_app_services(services: dict[str, Any]) -> None:
    for name in APP_SERVICES:
        env = env_of(services[name])
        wanted = [v for v in settings_vars() if name in DAGSTER_SERVICES or v not in DAGSTER_ONLY]
        missing = [v for v in wanted if v not in env]
        assert missing == [], f"{name} does not get {missing}"
        for var in wanted:
            value = env[var]
            # Pass-through (None: from .env/shell or unset) or an interpolation of the same variable.
            assert value is None or str(value).startswith(f"${{{var}"), f"{name}: {var}={value!r}"
            if value is not None and var not in CONTAINER_OVERRIDES:
                pytest.fail(f"{name}: {var} has a compose default; only {CONTAINER_OVERRIDES} may")
    for name in DAGSTER_SERVICES:
        env = env_of(services[name])
        assert str(env["DAGSTER_PG_URL"]).startswith("${DAGSTER_PG_URL:-postgresql+psycopg2://")
        assert env["DAGSTER_HOME"]


def test_container_defaults_reach_the_bundled_services(services: dict[str, Any]) -> None:
    env = env_of(services["ingest"])
    db_url = resolve_defaults(str(env["MW_DATABASE_URL"]))
    assert db_url.startswith("postgresql://marketwatch:@timescaledb:5432/marketwatch")
    assert "sslmode=prefer" in db_url
    assert resolve_defaults(str(env["MW_KAFKA_BOOTSTRAP"])) == "kafka:9092"
    assert resolve_defaults(str(env["MW_METRICS_PORT"])) == "9100"
    for name in ("ingest", "processor", "notify"):
        assert "9100/healthz" in " ".join(services[name]["healthcheck"]["test"])
    # Kafka TLS/SASL and PostgreSQL TLS are configurable through the environment.
    for var in (
        "MW_KAFKA_SECURITY_PROTOCOL",
        "MW_KAFKA_SASL_MECHANISM",
        "MW_KAFKA_SASL_USERNAME",
        "SSL_CERT_FILE",
    ):
        assert var in env
    assert "POSTGRES_SSL" in COMPOSE.read_text()


def test_published_ports_default_to_loopback(services: dict[str, Any]) -> None:
    for name, svc in services.items():
        for port in svc.get("ports", []):
            assert resolve_defaults(str(port)).startswith("127.0.0.1:"), f"{name}: {port}"


def test_dockerignore_keeps_secrets_and_state_out() -> None:
    lines = set((ROOT / ".dockerignore").read_text().split())
    assert {".env", ".venv", ".mw", ".git"} <= lines
