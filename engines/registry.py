"""Engines by name, imported on first use (an engine's module may need optional parts)."""

from __future__ import annotations

import importlib

from engines.base import Engine, EngineError

_ENGINES = {
    "mirror": "engines.mirror:MirrorEngine",
    "archive": "engines.archive:ArchiveEngine",
    "rsync": "engines.rsync:RsyncEngine",
    "restic": "engines.restic:ResticEngine",
}
ENGINE_NAMES = tuple(_ENGINES)


def get_engine(name: str) -> Engine:
    """Return a new engine object by name, or a clear error for an unknown name."""
    target = _ENGINES.get(name)
    if target is None:
        raise EngineError(f"unknown engine {name!r}; choose one of {', '.join(_ENGINES)}")
    module_name, class_name = target.split(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    engine = cls()
    assert isinstance(engine, Engine)
    return engine
