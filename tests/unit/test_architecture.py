"""Import rules (STYLE.md §1): dependencies point one way; pure logic imports no I/O."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
IO_LIBS = {"asyncpg", "aiokafka", "websockets", "httpx", "openai", "psycopg2", "dagster", "feedparser"}
PURE_MODULES = [
    "mw_core/markets/windows.py",
    "mw_core/markets/window_math.py",
    "mw_core/markets/detector.py",
    "mw_core/markets/codec.py",
    "mw_core/models.py",
    "mw_core/markets/frames.py",
    "mw_core/replay/klines.py",
    "mw_core/news/sanitize.py",
    "mw_core/news/sentiment.py",
    "mw_core/news/tagging.py",
    "mw_core/enrich/prompt.py",
]


def imported_roots(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    roots: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


def test_mw_core_never_imports_dagster() -> None:
    offenders = [
        str(p.relative_to(ROOT))
        for p in (ROOT / "mw_core").rglob("*.py")
        if {"dagster", "mw_dagster", "sensors"} & imported_roots(p)
    ]
    assert offenders == []


@pytest.mark.parametrize("module", PURE_MODULES)
def test_pure_modules_import_no_io(module: str) -> None:
    path = ROOT / module
    if not path.exists():
        pytest.fail(f"{module} is listed as pure logic but does not exist")
    assert imported_roots(path) & IO_LIBS == set()


def test_sql_is_never_built_with_fstrings_or_format() -> None:
    """All SQL goes through $n parameters: no f-string / % / .format() SQL in the code base."""
    offenders = []
    keywords = ("SELECT ", "INSERT ", "UPDATE ", "DELETE ", "CREATE ", "DROP ")
    for path in [*(ROOT / "mw_core").rglob("*.py"), *(ROOT / "mw_dagster").rglob("*.py")]:
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
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert offenders == []
