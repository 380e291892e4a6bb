"""The test suite's own layout: test modules share helpers through helper modules only."""

from __future__ import annotations

import ast
import functools
from pathlib import Path

from tests.conftest import SLOW_MODULES, SLOW_TESTS

TESTS = Path(__file__).resolve().parent


@functools.cache
def parsed(path: Path) -> ast.Module:
    """A file's syntax tree (each file is parsed once for all the checks here)."""
    return ast.parse(path.read_text(encoding="utf-8"), str(path))


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports (absolute names; `from . import x` as `tests.x`)."""
    names: set[str] = set()
    for node in ast.walk(parsed(path)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = "tests" + (f".{base}" if base else "")
            names.add(base)
            # `from tests import test_x` imports a module by its attribute name.
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def modules_of_tests(names: set[str]) -> list[str]:
    """The test modules (tests.test_*) among dotted names, each once, sorted."""
    found = {".".join(parts[:2]) for parts in (name.split(".") for name in names)
             if len(parts) >= 2 and parts[0] == "tests" and parts[1].startswith("test_")}
    return sorted(found)


def test_no_module_in_tests_imports_a_test_module() -> None:
    # A helper defined in a test module drags that module's tests (and fixtures) into every
    # importer, and moving a test breaks unrelated modules: helpers live in *_helpers.py.
    offenders = {path.name: modules_of_tests(imported_modules(path))
                 for path in sorted(TESTS.glob("*.py"))}
    assert {name: found for name, found in offenders.items() if found} == {}


def test_the_layout_check_sees_a_test_module_import(tmp_path: Path) -> None:
    sample = tmp_path / "test_sample.py"
    sample.write_text("from tests.test_api import wait_run\nfrom tests import test_pages\n"
                      "from .test_runner import start\nfrom tests.api_helpers import start\n")
    assert modules_of_tests(imported_modules(sample)) == [
        "tests.test_api", "tests.test_pages", "tests.test_runner"]


def test_every_test_marked_slow_by_name_exists() -> None:
    # A renamed test or module would silently drop back into the fast subset.
    modules = {path.stem for path in TESTS.glob("test_*.py")}
    tests = {node.name for path in TESTS.glob("test_*.py")
             for node in ast.walk(parsed(path))
             if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
             and node.name.startswith("test_")}
    assert sorted(SLOW_MODULES - modules) == []
    assert sorted(SLOW_TESTS - tests) == []
