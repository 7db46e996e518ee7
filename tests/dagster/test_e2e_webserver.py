"""End to end: a real dagster-webserver + dagster-daemon on our dagster.yaml (PostgreSQL storage).

Launches a materialization of `db_schema` through the GraphQL API (the implicit ``__ASSET_JOB``),
which goes through the QueuedRunCoordinator -> daemon -> run worker, then reads the run status,
the run history and the asset's metadata back over GraphQL, and reports a `service_health`
observation through the webserver's REST endpoint.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from dagster import DagsterRunStatus
from dagster_graphql import DagsterGraphQLClient

from mw_core.adapters.postgres.schema import SCHEMA_VERSION
from mw_core.local.ports import free_port
from mw_dagster.infra.health import report_service_health
from tests.dagster.helpers import BIN, ROOT, dagster_env, fresh_database, make_dagster_home, stop_group

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

LOCATION = "mw_dagster.definitions"

RUN_QUERY = """
query Run($runId: ID!) {
  runOrError(runId: $runId) {
    __typename
    ... on Run { runId status jobName assetSelection { path } stats { ... on RunStatsSnapshot { stepsSucceeded } } }
  }
}
"""

HISTORY_QUERY = """
query History {
  runsOrError(limit: 10) { ... on Runs { results { runId status jobName } } }
  assetOrError(assetKey: {path: ["db_schema"]}) {
    ... on Asset {
      assetMaterializations(limit: 1) {
        runId
        metadataEntries { label ... on IntMetadataEntry { intValue } ... on BoolMetadataEntry { boolValue } }
      }
    }
  }
}
"""

TICKS_QUERY = """
query Ticks($selector: SensorSelector!) {
  sensorOrError(sensorSelector: $selector) {
    __typename
    ... on Sensor { sensorState { status ticks(limit: 50) { id status timestamp error { message causes { message } } } } }
  }
}
"""

OBSERVATIONS_QUERY = """
query Obs {
  assetOrError(assetKey: {path: ["service_health"]}) {
    ... on Asset { assetObservations(limit: 1) { description metadataEntries { label } } }
  }
}
"""


def _graphql(url: str, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
    response = httpx.post(f"{url}/graphql", json={"query": query, "variables": variables or {}}, timeout=30)
    response.raise_for_status()
    body = response.json()
    assert "errors" not in body, body
    return body["data"]  # type: ignore[no-any-return]


@pytest.fixture
def dagster_stack(pg_server_url: str, db_url: str, tmp_path: Path) -> Iterator[str]:
    """webserver + daemon on a fresh Dagster database; yields the webserver base URL."""
    with fresh_database(pg_server_url) as dagster_url:
        yield from _webserver_and_daemon(dagster_url, db_url, tmp_path)


def _webserver_and_daemon(dagster_url: str, db_url: str, tmp_path: Path) -> Iterator[str]:
    home = make_dagster_home(tmp_path / "dagster_home")
    port = free_port("127.0.0.1")
    env = dagster_env(
        home,
        dagster_url,
        MW_DATABASE_URL=db_url,
        MW_RSS_FEEDS="",  # no internet: the RSS sensor just skips
        MW_LLM_PROVIDER="template",
    )
    logs = tmp_path / "logs"
    logs.mkdir()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for name, argv in [
            ("daemon", [str(BIN / "dagster-daemon"), "run", "-w", "workspace.yaml"]),
            (
                "webserver",
                [str(BIN / "dagster-webserver"), "-h", "127.0.0.1", "-p", str(port), "-w", "workspace.yaml"],
            ),
        ]:
            with (logs / f"{name}.log").open("wb") as out:
                procs.append(
                    subprocess.Popen(
                        argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
                    )
                )
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 90
        while True:
            for proc in procs:
                if proc.poll() is not None:
                    pytest.fail(f"{proc.args!r} exited early:\n" + _tail(logs))
            try:
                if httpx.get(f"{url}/server_info", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("webserver did not answer within 90 s:\n" + _tail(logs))
            time.sleep(0.5)
        yield url
    finally:
        for proc in reversed(procs):
            stop_group(proc)


def _tail(logs: Path) -> str:
    return "\n".join(
        f"--- {p.name}\n" + p.read_text(errors="replace")[-3000:] for p in sorted(logs.iterdir())
    )


def _wait_run(client: DagsterGraphQLClient, run_id: str, timeout: float = 150) -> DagsterRunStatus:
    deadline = time.monotonic() + timeout
    status = client.get_run_status(run_id)
    while status not in (DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED):
        assert time.monotonic() < deadline, f"run {run_id} still {status}"
        time.sleep(1)
        status = client.get_run_status(run_id)
    return status


def _sensor_ticks(url: str, sensor: str) -> list[dict[str, Any]]:
    selector = {"repositoryLocationName": LOCATION, "repositoryName": "__repository__", "sensorName": sensor}
    data = _graphql(url, TICKS_QUERY, {"selector": selector})["sensorOrError"]
    assert data["__typename"] == "Sensor", data
    return list(data["sensorState"]["ticks"])


def test_launch_db_schema_through_graphql_and_read_it_back(dagster_stack: str) -> None:
    url = dagster_stack
    host, port = url.removeprefix("http://").split(":")
    client = DagsterGraphQLClient(host, port_number=int(port), timeout=30)
    run_id = client.submit_job_execution(
        "__ASSET_JOB",
        repository_location_name=LOCATION,
        repository_name="__repository__",
        asset_selection=["db_schema"],
        tags={"mw/test": "e2e"},
    )
    assert _wait_run(client, run_id) == DagsterRunStatus.SUCCESS

    run = _graphql(url, RUN_QUERY, {"runId": run_id})["runOrError"]
    assert run["__typename"] == "Run" and run["status"] == "SUCCESS"
    assert run["assetSelection"] == [{"path": ["db_schema"]}] and run["stats"]["stepsSucceeded"] == 1

    history = _graphql(url, HISTORY_QUERY)
    assert run_id in [r["runId"] for r in history["runsOrError"]["results"]]
    (materialization,) = history["assetOrError"]["assetMaterializations"]
    assert materialization["runId"] == run_id
    entries = {e["label"]: e for e in materialization["metadataEntries"]}
    assert entries["schema_version"]["intValue"] == SCHEMA_VERSION and "timescale" in entries

    # A long-lived service reports its health over HTTP (no Dagster instance in that process).
    report_service_health(url, service="processor", status="ok", metrics={"ticks_per_minute": 300})
    (obs,) = _graphql(url, OBSERVATIONS_QUERY)["assetOrError"]["assetObservations"]
    assert obs["description"] == "processor: ok"
    assert {"service", "status", "ticks_per_minute"} <= {e["label"] for e in obs["metadataEntries"]}

    # Retention: the daemon has ticked the (default-running) sensors by now; the maintenance job
    # purges ticks and finished runs older than the configured days (0 here = everything so far).
    deadline = time.monotonic() + 60
    ticks: dict[str, list[dict[str, Any]]] = {}
    for sensor in (
        "new_anomalies_sensor",
        "rss_poll_sensor",
        "service_health_sensor",
        "orphaned_runs_sensor",
    ):
        while not (found := _sensor_ticks(url, sensor)):
            assert time.monotonic() < deadline, f"the daemon never ticked {sensor}"
            time.sleep(1)
        ticks[sensor] = found
    # Under the daemon (resources injected by the code server) every sensor evaluates cleanly.
    errors = [str(t["error"]) for ts in ticks.values() for t in ts if t["error"]]
    assert {t["status"] for ts in ticks.values() for t in ts} == {"SKIPPED"}, "\n".join(errors)
    before = ticks["new_anomalies_sensor"]
    purge_id = client.submit_job_execution(
        "maintenance_job",
        repository_location_name=LOCATION,
        repository_name="__repository__",
        run_config={
            "ops": {"purge_dagster_history": {"config": {"tick_retention_days": 0, "run_retention_days": 0}}}
        },
    )
    assert _wait_run(client, purge_id) == DagsterRunStatus.SUCCESS
    remaining = {t["id"] for t in _sensor_ticks(url, "new_anomalies_sensor")}
    assert not remaining & {t["id"] for t in before}, (before, remaining)
    runs = [r["runId"] for r in _graphql(url, HISTORY_QUERY)["runsOrError"]["results"]]
    assert run_id not in runs and purge_id in runs
