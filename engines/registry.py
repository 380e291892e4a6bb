"""The engines, in one place: name, label, class, options and destination kind of each.

Everything that needs to know the engines reads this table: job validation (the engine
names and each one's destination rules, passed into models.job), option checks when a job
is saved, the job form (its engine select and option help), destination ownership and the
runner's one-run-per-destination key. A new engine is one `EngineInfo` here. An engine's
module is imported on first use only (it may need optional parts).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engines.base import Engine, EngineError
from engines.destinations import DestinationKind, LocalFolder, ResticRepository
from engines.options import Option, abs_path, flag, one_of, text, whole


@dataclass(frozen=True)
class EngineInfo:
    """One engine as the rest of the program sees it before it runs."""

    name: str
    label: str  # one line for the job form
    target: str  # "module:Class", imported on first use
    options: tuple[Option, ...]
    destination: DestinationKind
    # A check across options (one option's range depending on another), or None.
    combined: Callable[[Mapping[str, Any]], str | None] | None = None

    def option(self, name: str) -> Option | None:
        """The option of that name, or None."""
        return next((o for o in self.options if o.name == name), None)

    def engine_class(self) -> type[Engine]:
        """The engine's class, imported now."""
        module_name, class_name = self.target.split(":")
        cls = getattr(importlib.import_module(module_name), class_name)
        assert isinstance(cls, type) and issubclass(cls, Engine)
        return cls


_BWLIMIT = Option("bwlimit", "KiB/s", "bandwidth limit, as rsync reads it; 0 means no "
                  "limit", whole(0, 10_000_000), default=0)
# checksum: compare file contents, not only size, mtime, ctime and inode, to find
# changes (slower: every file is read). The engines read spec.options["checksum"].
_CHECKSUM = Option("checksum", "true or false", "compare file contents to find changes "
                   "(slower: every file is read)", flag, default=False)


def _gzip_level(options: Mapping[str, Any]) -> str | None:
    level = options.get("level")
    if options.get("compression") == "gzip" and isinstance(level, int) and level > 9:
        return "level must be from 1 to 9 with gzip"
    return None


ENGINES: tuple[EngineInfo, ...] = (
    EngineInfo("mirror", "browsable snapshot folders (hard links)",
               "engines.mirror:MirrorEngine",
               (_BWLIMIT,
                Option("threads", "1 to 64", "files copied at once; default: twice the "
                       "cores, at most 8", whole(1, 64)),
                _CHECKSUM),
               LocalFolder()),
    # archive and restic have no bandwidth limit (yet): refused rather than ignored.
    EngineInfo("archive", "one .tar.zst per run", "engines.archive:ArchiveEngine",
               (Option("compression", "zstd or gzip", "how each archive is compressed",
                       one_of("zstd", "gzip"), default="zstd"),
                Option("level", "1 to 22", "compression level; default 3 for zstd, 6 for "
                       "gzip (which goes up to 9)", whole(1, 22))),
               LocalFolder(), combined=_gzip_level),
    EngineInfo("rsync", "snapshot folders made by rsync", "engines.rsync:RsyncEngine",
               (_BWLIMIT, _CHECKSUM), LocalFolder()),
    # The restic engine works on a local repository today (engines/restic/cli.py repo_for
    # opens its folder); ResticRepository(remote=True) lets URLs through once it can.
    EngineInfo("restic", "a restic repository", "engines.restic:ResticEngine",
               (Option("password_file", "absolute path", "the file whose first line is the "
                       "repository password; it must exist and be readable", abs_path,
                       required=True, secret_file=True),
                Option("init", "true or false", "create the repository on the first backup",
                       flag, default=False),
                Option("cache_dir", "absolute path", "restic's cache; default: restic's own",
                       abs_path),
                Option("read_data_subset", "text", "what verify reads: 10%, 1/5 or 2G; "
                       "default: all data", text)),
               ResticRepository()),
)
BY_NAME: dict[str, EngineInfo] = {info.name: info for info in ENGINES}
ENGINE_NAMES = tuple(BY_NAME)
# Destinations of jobs whose engine is not known (an old log, a caller without one) are
# read the widest way: a local path, "local:/path" or a repository URL.
ANY_DESTINATION = ResticRepository(remote=True)


def engine_info(name: str) -> EngineInfo:
    """The engine's entry, or a clear error for an unknown name."""
    info = BY_NAME.get(name)
    if info is None:
        raise EngineError(f"unknown engine {name!r}; choose one of {', '.join(BY_NAME)}")
    return info


def get_engine(name: str) -> Engine:
    """Return a new engine object by name, or a clear error for an unknown name."""
    engine = engine_info(name).engine_class()()
    assert isinstance(engine, Engine)
    return engine


def catalog() -> dict[str, DestinationKind]:
    """Engine names and their destination rules, as models.job.JobSpec.from_input takes."""
    return {info.name: info.destination for info in ENGINES}


def destination_kind(engine: str) -> DestinationKind:
    """How the engine reads its destination (the widest reading for an unknown engine)."""
    info = BY_NAME.get(engine)
    return info.destination if info is not None else ANY_DESTINATION


def destination_key(engine: str, destination: str) -> str:
    """The destination's identity: one run at a time per key (no I/O)."""
    return destination_kind(engine).key(destination)


def local_destination(engine: str, destination: str) -> Path | None:
    """The local folder a job's destination writes, or None for a remote one (no I/O)."""
    return destination_kind(engine).local_path(destination)


def option_problems(engine: str, options: Mapping[str, Any]) -> str | None:
    """What is wrong with a job's engine options, in one message, or None."""
    info = BY_NAME.get(engine)
    if info is None:
        return None  # the engine itself is refused elsewhere
    problems = [f"{o.name} is needed by the {engine} engine ({o.help})"
                for o in info.options if o.required and options.get(o.name) in (None, "")]
    for name, value in options.items():
        option = info.option(name)
        if option is None:
            known = ", ".join(sorted(o.name for o in info.options))
            problems.append(f"{name} is not an option of the {engine} engine (it takes "
                            f"{known})")
        elif (wrong := option.check(value)) is not None:
            problems.append(f"{name} {wrong}")
    if info.combined is not None and (wrong := info.combined(options)) is not None:
        problems.append(wrong)
    return "; ".join(problems) or None
