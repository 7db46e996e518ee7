"""Helpers of the end-to-end tests: the platform as `mw` subprocesses, Dagster's GraphQL API,
headless Chromium, and a small DOM reader.

- `Platform` runs the real command lines (`mw up --detach`, `mw status --json`, `mw down`) with
  ``MW_STATE_DIR`` in a temporary directory and an environment without ``MW_*`` / ``DAGSTER_*``
  variables, so the stack starts its embedded PostgreSQL and broker. It remembers every process
  it saw (supervisor, components, their descendants) so a test can check none survives `mw down`
  and the fixture can end exactly those when a test failed half-way.
- `DagsterAPI` launches asset materializations through ``/graphql`` (the implicit
  ``__ASSET_JOB``, as the UI does) and waits for them; the daemon's queued run coordinator
  starts the runs.
- `Chromium` renders a page with ``--dump-dom`` / ``--screenshot``; `parse_dom` and `rows_by_link`
  find the table row of each link without depending on the UI's generated CSS class names.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import psutil

from mw_core.local.ports import port_free, port_open
from tests.e2e.devtools import HEADLESS_FLAGS

ROOT = Path(__file__).resolve().parents[2]
MW = (
    [str(Path(sys.executable).parent / "mw")]
    if (Path(sys.executable).parent / "mw").exists()
    else [
        sys.executable,
        "-c",
        "from mw_core.cli import main; main()",
    ]
)
FINISHED = ("SUCCESS", "FAILURE", "CANCELED")


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without Market Watch / Dagster settings, plus `extra`.

    ``COLUMNS`` keeps rich from wrapping messages at 80 columns (the tests read them).
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MW_", "DAGSTER_"))}
    env.update(PYTHONUNBUFFERED="1", COLUMNS="200", **extra)
    return env


def port_in_use(host: str, port: int) -> bool:
    """True when something accepts connections on `host:port` or the port cannot be bound."""
    return port_open(host, port) or not port_free(host, port)


def alive(proc: psutil.Process) -> bool:
    """Running and not a zombie (an orphan's zombie waits for a possibly non-reaping init)."""
    try:
        return bool(proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


def host_port(address: str) -> tuple[str, int]:
    """``(host, port)`` of ``scheme://host:port/...`` or ``host:port``."""
    parts = urlsplit(address if "://" in address else f"tcp://{address}")
    assert parts.hostname is not None and parts.port is not None, address
    return parts.hostname, parts.port


# --- the platform as subprocesses -------------------------------------------------------------------


@dataclass
class Platform:
    """One stack, driven only through the `mw` command line."""

    state_dir: Path
    env: dict[str, str]
    dagster_port: int
    seen: dict[int, psutil.Process] = field(default_factory=dict)
    ports: set[tuple[str, int]] = field(default_factory=set)

    def mw(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*MW, *args],
            env=self.env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def up(self, *args: str, timeout: float = 150) -> subprocess.CompletedProcess[str]:
        """`mw up --detach ...` on this state dir and Dagster port; records the processes."""
        done = self.mw("up", "--detach", "--dagster-port", str(self.dagster_port), *args, timeout=timeout)
        if done.returncode == 0:
            self.remember()
        return done

    def status(self) -> dict[str, Any]:
        done = self.mw("status", "--json")
        data: dict[str, Any] = json.loads(done.stdout)
        data["_exit"] = done.returncode
        return data

    def status_file(self) -> dict[str, Any] | None:
        try:
            data: dict[str, Any] = json.loads((self.state_dir / "status.json").read_text())
        except (OSError, ValueError):
            return None
        return data

    def remember(self) -> None:
        """Record the supervisor, every component, their descendants and their addresses."""
        status = self.status_file()
        if status is None:
            return
        pids = [status.get("supervisor", {}).get("pid")]
        pids += [c.get("pid") for c in status.get("components", [])]
        for pid in pids:
            if not isinstance(pid, int):
                continue
            with contextlib.suppress(psutil.Error):
                proc = psutil.Process(pid)
                for p in [proc, *proc.children(recursive=True)]:
                    self.seen.setdefault(p.pid, p)
        meta = status.get("meta", {})
        for comp in status.get("components", []):
            address = str(comp.get("address") or "")
            if re.match(r"^[a-z]+://[^/]+:\d+", address) or re.match(r"^[\d.]+:\d+$", address):
                self.ports.add(host_port(address))
        for key in ("dagster_url", "database_url", "kafka_bootstrap", "ingest_health", "process_health"):
            if meta.get(key):
                self.ports.add(host_port(str(meta[key])))

    def processes_of_state_dir(self) -> list[psutil.Process]:
        """Live processes whose command line mentions the state dir (other than this test)."""
        needle = str(self.state_dir)
        found = []
        for proc in psutil.process_iter(["cmdline", "status"]):
            with contextlib.suppress(psutil.Error):
                if proc.pid == os.getpid() or proc.info["status"] == psutil.STATUS_ZOMBIE:
                    continue
                if any(needle in part for part in proc.info["cmdline"] or ()):
                    found.append(proc)
        return found

    def survivors(self) -> list[str]:
        """Descriptions of recorded or state-dir processes still alive."""
        procs = {p.pid: p for p in self.seen.values() if alive(p)}
        procs.update({p.pid: p for p in self.processes_of_state_dir()})
        out = []
        for proc in procs.values():
            with contextlib.suppress(psutil.Error):
                out.append(f"{proc.pid} {' '.join(proc.cmdline())[:200]}")
        return out

    def kill_leftovers(self) -> list[str]:
        """Last resort after a failed test: SIGKILL exactly the processes this stack started."""
        left = self.survivors()
        targets = [p for p in self.seen.values() if alive(p)] + self.processes_of_state_dir()
        for proc in targets:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        psutil.wait_procs(targets, timeout=5)
        return left


def start_platform(tmp_path: Path, *, dagster_port: int, **env: str) -> Platform:
    state_dir = tmp_path / "state"
    return Platform(state_dir, clean_env(MW_STATE_DIR=str(state_dir), **env), dagster_port)


@contextlib.contextmanager
def running(platform: Platform, *args: str) -> Iterator[Platform]:
    """`mw up --detach` now, `mw down` (and, if needed, killing what survived) on the way out."""
    try:
        done = platform.up(*args)
        if done.returncode != 0:
            log = platform.state_dir / "logs" / "supervisor.out"
            tail = log.read_text(errors="replace")[-4000:] if log.exists() else ""
            raise AssertionError(f"mw up failed ({done.returncode}):\n{done.stdout}\n{done.stderr}\n{tail}")
        yield platform
    finally:
        if platform.status_file() is not None:
            platform.remember()
            platform.mw("down", timeout=60)
        platform.kill_leftovers()


def wait_for(
    what: str, probe: Callable[[], Any], *, timeout: float, interval: float = 0.5, diagnose: str = ""
) -> Any:
    """Poll `probe` until it returns something truthy; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}. {diagnose}")
        time.sleep(interval)


# --- Dagster GraphQL ------------------------------------------------------------------------------------

REPOSITORIES = """
query { repositoriesOrError { __typename
  ... on RepositoryConnection { nodes { name location { name } assetNodes { assetKey { path } } } }
  ... on PythonError { message } } }
"""

WORKSPACE = """
query { workspaceOrError { __typename
  ... on Workspace { locationEntries { name loadStatus
    locationOrLoadError { __typename ... on PythonError { message } } } } } }
"""

ACTIVE_RUNS = """
query { runsOrError(filter: {statuses: [QUEUED, NOT_STARTED, STARTING, STARTED, CANCELING]}) {
  ... on Runs { results { runId status jobName } } } }
"""

LAUNCH = """
mutation Launch($params: ExecutionParams!) { launchRun(executionParams: $params) { __typename
  ... on LaunchRunSuccess { run { runId status } }
  ... on PythonError { message }
  ... on PipelineNotFoundError { message }
  ... on InvalidSubsetError { message }
  ... on RunConfigValidationInvalid { errors { message } }
  ... on UnauthorizedError { message } } }
"""

RUN = """
query Run($runId: ID!) { runOrError(runId: $runId) { __typename
  ... on Run { runId status jobName tags { key value } assetSelection { path } } } }
"""

RUN_ERRORS = """
query Logs($runId: ID!) { logsForRun(runId: $runId, limit: 500) { __typename
  ... on EventConnection { events { __typename
    ... on MessageEvent { message level }
    ... on ExecutionStepFailureEvent { error { message } } } } } }
"""

MATERIALIZATIONS = """
query Mat($key: AssetKeyInput!, $partitions: [String!]) { assetOrError(assetKey: $key) { __typename
  ... on Asset { assetMaterializations(limit: 5, partitions: $partitions) { runId partition
    metadataEntries { label ... on IntMetadataEntry { intValue } ... on FloatMetadataEntry { floatValue } } } } } }
"""


@dataclass
class DagsterAPI:
    url: str
    location: str = ""
    repository: str = "__repository__"

    def query(self, query: str, variables: Mapping[str, Any] | None = None) -> dict[str, Any]:
        response = httpx.post(
            f"{self.url}/graphql", json={"query": query, "variables": dict(variables or {})}, timeout=30
        )
        response.raise_for_status()
        body = response.json()
        assert "errors" not in body, body
        return body["data"]  # type: ignore[no-any-return]

    def discover(self, *, timeout: float = 60) -> list[str]:
        """Wait until the code location is loaded (the webserver answers before it is), find our
        repository's location name and return its asset keys (``a/b`` joined)."""
        deadline = time.monotonic() + timeout
        while True:
            data = self.query(REPOSITORIES)["repositoriesOrError"]
            assert data["__typename"] == "RepositoryConnection", data
            repos = [n for n in data["nodes"] if n["name"] == self.repository]
            if repos:
                break
            workspace = self.query(WORKSPACE)["workspaceOrError"]
            assert time.monotonic() < deadline, (
                f"no repository {self.repository!r} after {timeout:.0f}s: {workspace}"
            )
            time.sleep(0.5)
        (repo,) = repos
        self.location = repo["location"]["name"]
        return sorted("/".join(a["assetKey"]["path"]) for a in repo["assetNodes"])

    def wait_idle(self, *, timeout: float) -> None:
        """Wait until no run is queued or in progress (the sensors launch runs of their own)."""
        deadline = time.monotonic() + timeout
        while busy := self.query(ACTIVE_RUNS)["runsOrError"]["results"]:
            assert time.monotonic() < deadline, f"runs still active after {timeout:.0f}s: {busy}"
            time.sleep(1)

    def launch(self, assets: Sequence[str], *, partition: str | None = None) -> str:
        tags = [{"key": "mw/test", "value": "e2e"}]
        if partition is not None:
            tags.append({"key": "dagster/partition", "value": partition})
        params = {
            "selector": {
                "repositoryLocationName": self.location,
                "repositoryName": self.repository,
                "pipelineName": "__ASSET_JOB",
                "assetSelection": [{"path": key.split("/")} for key in assets],
            },
            "executionMetadata": {"tags": tags},
        }
        result = self.query(LAUNCH, {"params": params})["launchRun"]
        assert result["__typename"] == "LaunchRunSuccess", result
        return str(result["run"]["runId"])

    def run(self, run_id: str) -> dict[str, Any]:
        run = self.query(RUN, {"runId": run_id})["runOrError"]
        assert run["__typename"] == "Run", run
        return run  # type: ignore[no-any-return]

    def wait(self, run_ids: Sequence[str], *, timeout: float) -> dict[str, str]:
        """Poll until every run finished; return run id -> status."""
        deadline = time.monotonic() + timeout
        while True:
            statuses = {run_id: str(self.run(run_id)["status"]) for run_id in run_ids}
            if all(s in FINISHED for s in statuses.values()):
                return statuses
            assert time.monotonic() < deadline, f"runs not finished after {timeout:.0f}s: {statuses}"
            time.sleep(1)

    def errors(self, run_id: str) -> str:
        """The error messages of a run's event log (for assertion messages)."""
        logs = self.query(RUN_ERRORS, {"runId": run_id})["logsForRun"]
        lines = []
        for event in logs.get("events", []):
            if event.get("level") in ("ERROR", "CRITICAL") or event.get("error"):
                lines.append(
                    str(event.get("message")) + " " + str((event.get("error") or {}).get("message", ""))
                )
        return "\n".join(lines)[-4000:]

    def materializations(self, asset: str, *, partition: str | None = None) -> list[dict[str, Any]]:
        data = self.query(
            MATERIALIZATIONS,
            {"key": {"path": asset.split("/")}, "partitions": [partition] if partition else None},
        )["assetOrError"]
        assert data["__typename"] == "Asset", data
        return list(data["assetMaterializations"])


# --- headless Chromium -------------------------------------------------------------------------------


def find_chromium() -> str | None:
    for candidate in (shutil.which("chromium"), "/usr/bin/chromium", shutil.which("chromium-browser")):
        if candidate and Path(candidate).exists():
            return candidate
    return None


@dataclass
class Chromium:
    binary: str
    profile: Path
    window: str = "1600,1000"

    def _run(self, *args: str, budget_ms: int) -> subprocess.CompletedProcess[bytes]:
        argv = [
            self.binary,
            *HEADLESS_FLAGS,
            f"--user-data-dir={self.profile}",
            f"--window-size={self.window}",
            f"--virtual-time-budget={budget_ms}",
            *args,
        ]
        return subprocess.run(argv, capture_output=True, timeout=120, check=False)

    def dom(self, url: str, *, budget_ms: int = 15000) -> str:
        done = self._run("--dump-dom", url, budget_ms=budget_ms)
        assert done.returncode == 0, done.stderr.decode(errors="replace")[-2000:]
        return done.stdout.decode("utf-8", "replace")

    def screenshot(self, url: str, path: Path, *, budget_ms: int = 15000) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.unlink(missing_ok=True)
        done = self._run(f"--screenshot={path}", url, budget_ms=budget_ms)
        assert done.returncode == 0 and path.exists(), done.stderr.decode(errors="replace")[-2000:]
        return path

    def render(
        self, url: str, ready: Callable[[Node], bool], *, budgets: Sequence[int] = (15000, 30000, 60000)
    ) -> tuple[Node, int]:
        """The page's DOM once `ready` holds, trying longer virtual-time budgets; and that budget."""
        root = Node("#root")
        for budget in budgets:
            root = parse_dom(self.dom(url, budget_ms=budget))
            if ready(root):
                return root, budget
        raise AssertionError(f"{url} never showed the expected content; it rendered:\n{root.text()[:3000]}")


def is_png(path: Path) -> bool:
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --- a small DOM ------------------------------------------------------------------------------------------

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}
SKIP_TEXT = {"script", "style", "noscript", "template"}


@dataclass(eq=False)
class Node:
    tag: str
    attrs: dict[str, str] = field(default_factory=dict)
    parent: Node | None = None
    children: list[Node | str] = field(default_factory=list)

    def text(self) -> str:
        """Visible text, whitespace-collapsed."""
        parts: list[str] = []

        def walk(node: Node) -> None:
            if node.tag in SKIP_TEXT:
                return
            for child in node.children:
                if isinstance(child, str):
                    parts.append(child)
                else:
                    walk(child)

        walk(self)
        return " ".join(" ".join(parts).split())

    def iter(self) -> Iterator[Node]:
        yield self
        for child in self.children:
            if isinstance(child, Node):
                yield from child.iter()

    def links(self, prefix: str) -> list[Node]:
        return [n for n in self.iter() if n.tag == "a" and n.attrs.get("href", "").startswith(prefix)]


class _Builder(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Node("#root")
        self.current = self.root

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = Node(tag, {k: v or "" for k, v in attrs}, self.current)
        self.current.children.append(node)
        if tag not in VOID:
            self.current = node

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.current.children.append(Node(tag, {k: v or "" for k, v in attrs}, self.current))

    def handle_endtag(self, tag: str) -> None:
        node: Node | None = self.current
        while node is not None and node.tag != tag:
            node = node.parent
        if node is not None and node.parent is not None:  # unmatched end tags are ignored
            self.current = node.parent

    def handle_data(self, data: str) -> None:
        self.current.children.append(data)


def parse_dom(html: str) -> Node:
    builder = _Builder()
    builder.feed(html)
    builder.close()
    return builder.root


def link_key(href: str, prefix: str) -> str:
    """What a link points at below `prefix` (``/runs/<id>?x`` -> ``<id>``)."""
    return href[len(prefix) :].split("?", 1)[0].split("/", 1)[0]


def rows_by_link(root: Node, prefix: str) -> dict[str, str]:
    """For every link under `prefix`, the text of its row: the largest ancestor that links to
    nothing else under `prefix` (so no dependency on the UI's CSS class names)."""
    rows: dict[str, str] = {}
    for link in root.links(prefix):
        key = link_key(link.attrs["href"], prefix)
        if not key or key in rows:
            continue
        row = link
        while row.parent is not None:
            others = {link_key(a.attrs["href"], prefix) for a in row.parent.links(prefix)}
            if others - {key}:
                break
            row = row.parent
        rows[key] = row.text()
    return rows
