"""Import rules of `mw_core.news`: the pure half stays pure, the package import stays light."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import mw_core.news as news
from tests.unit.test_architecture import IO_LIBS as ARCHITECTURE_IO_LIBS

pytestmark = pytest.mark.unit

NEWS = Path(news.__file__).resolve().parent
# The I/O libraries of the architecture test, except feedparser (the pure parser's own dependency),
# plus the HTTP stacks feedparser could pull in.
IO_LIBS = (ARCHITECTURE_IO_LIBS - {"feedparser"}) | {"requests", "urllib3"}
PURE = ["sanitize.py", "sentiment.py", "tagging.py", "parse.py"]


def imported_roots(path: Path) -> set[str]:
    roots: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize("module", PURE)
def test_pure_modules_import_no_io(module: str) -> None:
    assert imported_roots(NEWS / module) & IO_LIBS == set()


def test_pure_modules_only_import_pure_siblings() -> None:
    for module in PURE:
        tree = ast.parse((NEWS / module).read_text())
        siblings = {
            n.module
            for n in ast.walk(tree)
            if isinstance(n, ast.ImportFrom) and (n.module or "").startswith("mw_core.news")
        }
        assert siblings <= {"mw_core.news." + m.removesuffix(".py") for m in PURE}, module


def test_package_import_does_not_load_adapters() -> None:
    code = (
        "import sys, mw_core.news, mw_core.news.parse;"
        "loaded = sorted(m for m in ('httpx', 'asyncpg', 'aiokafka') if m in sys.modules);"
        "print(','.join(loaded))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_lazy_names_resolve() -> None:
    from mw_core.news import fetch, store

    assert news.collect is fetch.collect
    assert news.insert_headlines is store.insert_headlines
    for name in news.__all__:
        assert getattr(news, name) is not None
    with pytest.raises(AttributeError):
        _ = news.does_not_exist  # type: ignore[attr-defined]
