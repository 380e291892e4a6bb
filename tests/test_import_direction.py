"""The layers import only downwards: models <- events <- storage <- core -> engines.

server adapts everything and may import anything; nothing imports server. An upward
import (an engine reaching into storage, the event log reaching into core) is how a
layered design turns into one knot, so it fails here rather than in review.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LAYERS = ("models", "events", "storage", "core", "engines", "server")
# What each layer may import besides itself.
ALLOWED: dict[str, frozenset[str]] = {
    "models": frozenset(),
    "events": frozenset({"models"}),
    "storage": frozenset({"models", "events"}),
    "core": frozenset({"models", "events", "storage", "engines"}),
    "engines": frozenset({"models"}),
    "server": frozenset(LAYERS),
}


def imported_layers(path: Path) -> set[tuple[str, int]]:
    """Every (layer, line) a module imports, at any depth of its code."""
    found: set[tuple[str, int]] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        for name in names:
            top = name.split(".", 1)[0]
            if top in LAYERS:
                found.add((top, node.lineno))
    return found


def modules(layer: str) -> list[Path]:
    """The Python files of one layer."""
    return sorted((ROOT / layer).rglob("*.py"))


@pytest.mark.parametrize("layer", LAYERS)
def test_a_layer_imports_only_the_layers_below_it(layer: str) -> None:
    """No module imports a layer above its own."""
    wrong = [f"{path.relative_to(ROOT)}:{line} imports {top}"
             for path in modules(layer)
             for top, line in sorted(imported_layers(path))
             if top != layer and top not in ALLOWED[layer]]
    assert not wrong, "upward imports:\n" + "\n".join(wrong)


def test_the_check_sees_an_upward_import(tmp_path: Path) -> None:
    """The parser finds imports inside functions too, so a lazy upward import fails."""
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from storage.atomic import fsync_dir\n    import core\n")
    assert imported_layers(module) == {("storage", 2), ("core", 3)}


def test_every_layer_has_modules() -> None:
    """A renamed layer folder cannot make the check pass by finding nothing."""
    for layer in LAYERS:
        assert len(modules(layer)) >= 2, layer
