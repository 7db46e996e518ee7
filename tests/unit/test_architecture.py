"""The doors between the rooms (CONTRIBUTING.md), checked on the import graph with `ast`.

- Pure rooms (`mw_core/markets/`, `mw_core/charts/` rendering aside, the pure news and enrich
  modules, `models.py`) import no I/O library.
- Services (`ingest`, `processor`, `news`, `enrich`, `notify`, `adapters`, `markets`, `batch`)
  never import the local platform (`mw_core.local`) or the CLI (`mw_core.cli`).
- `mw_core` never imports dagster, `mw_dagster` or `sensors`; nothing outside `tests/` imports tests.
- Only `mw_core/config.py` reads the environment (plus `mw_dagster/definitions.py`, the Dagster
  entry point); handing `os.environ` to a child process is fine.
- No SQL is built with f-strings. Benchmarks (`bench/`) may reuse the test harness (`tests/`).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
IO_LIBS = {
    "asyncpg",
    "aiokafka",
    "websockets",
    "httpx",
    "openai",
    "psycopg2",
    "dagster",
    "feedparser",
    "apprise",
    "aiosmtpd",
    "socket",
    "subprocess",
}
#: Rooms whose every module is pure logic.
PURE_ROOMS = ["mw_core/markets"]
#: Pure modules inside rooms that also hold I/O.
PURE_MODULES = [
    "mw_core/models.py",
    "mw_core/replay/klines.py",
    "mw_core/news/sanitize.py",
    "mw_core/news/sentiment.py",
    "mw_core/news/tagging.py",
    "mw_core/enrich/prompt.py",
    "mw_core/charts/model.py",
    "mw_core/charts/render.py",
    "mw_core/charts/alert.py",
    "mw_core/charts/market.py",
    "mw_core/charts/embed.py",
]
#: Service rooms: they never reach into the local platform or the CLI.
SERVICE_ROOMS = ["ingest", "processor", "news", "enrich", "notify", "adapters", "markets", "batch", "charts"]


def modules_of(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


def imports(path: Path) -> set[str]:
    """Every absolute module name `path` imports (``a.b.c`` for ``from a.b import c`` too)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def roots(path: Path) -> set[str]:
    return {n.split(".")[0] for n in imports(path)}


def rel(p: Path) -> str:
    return str(p.relative_to(ROOT))


def test_pure_rooms_and_modules_import_no_io() -> None:
    paths = [p for room in PURE_ROOMS for p in modules_of(room)] + [ROOT / m for m in PURE_MODULES]
    missing = [rel(p) for p in paths if not p.exists()]
    assert missing == [], f"listed as pure but missing: {missing}"
    offenders = {rel(p): sorted(roots(p) & IO_LIBS) for p in paths if roots(p) & IO_LIBS}
    assert offenders == {}


def test_services_never_import_local_or_cli() -> None:
    offenders = {}
    for room in SERVICE_ROOMS:
        for p in modules_of(f"mw_core/{room}"):
            bad = sorted(n for n in imports(p) if n.startswith(("mw_core.local", "mw_core.cli")))
            if bad:
                offenders[rel(p)] = bad
    assert offenders == {}


def test_mw_core_never_imports_dagster() -> None:
    offenders = [rel(p) for p in modules_of("mw_core") if {"dagster", "mw_dagster", "sensors"} & roots(p)]
    assert offenders == []


def test_nothing_outside_tests_imports_tests() -> None:
    code = [p for d in ("mw_core", "mw_dagster", "sensors") for p in modules_of(d)]
    assert [rel(p) for p in code if "tests" in roots(p)] == []


def test_the_root_holds_only_what_every_room_shares() -> None:
    assert sorted(p.name for p in (ROOT / "mw_core").glob("*.py")) == [
        "__init__.py",
        "config.py",
        "models.py",
        "telemetry.py",
    ]


def test_only_the_entry_points_read_the_environment() -> None:
    allowed = {"mw_core/config.py", "mw_dagster/definitions.py"}
    offenders = []
    for d in ("mw_core", "mw_dagster", "sensors"):
        for p in modules_of(d):
            if rel(p) in allowed:
                continue
            tree = ast.parse(p.read_text())
            for node in ast.walk(tree):
                # os.getenv(...) / os.environ.get(...) / os.environ[...]: reads. `{**os.environ}` and
                # `env=os.environ` hand the environment to a child process, which is fine.
                if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                    target = ast.unparse(node.func)
                    if target in {"os.getenv", "os.environ.get", "environ.get"}:
                        offenders.append(f"{rel(p)}:{node.lineno}")
                elif (
                    isinstance(node, ast.Subscript)
                    and ast.unparse(node.value) in {"os.environ", "environ"}
                    and isinstance(node.ctx, ast.Load)
                ):
                    offenders.append(f"{rel(p)}:{node.lineno}")
    assert offenders == []


def test_files_stay_small() -> None:
    big = {
        rel(p): n
        for d in ("mw_core", "mw_dagster", "sensors")
        for p in modules_of(d)
        if (n := len(p.read_text().splitlines())) > 600
    }
    assert big == {}


def test_sql_is_never_built_with_fstrings_or_format() -> None:
    """All SQL goes through $n parameters: no f-string SQL in the code base."""
    offenders = []
    keywords = ("SELECT ", "INSERT ", "UPDATE ", "DELETE ", "CREATE ", "DROP ")
    for path in [*modules_of("mw_core"), *modules_of("mw_dagster")]:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.JoinedStr):
                text = "".join(
                    v.value for v in node.values if isinstance(v, ast.Constant) and isinstance(v.value, str)
                )
                if (
                    any(k in text.upper() for k in keywords)
                    and "CREATE DATABASE" not in text.upper()
                    and "INTERVAL" not in text.upper()
                ):
                    offenders.append(f"{rel(path)}:{node.lineno}")
    assert offenders == []
