"""Which options each engine takes, checked when a job is saved rather than when it runs."""

from __future__ import annotations

import posixpath
from collections.abc import Callable, Mapping
from typing import Any

Check = Callable[[Any], str | None]  # returns what is wrong, or None


def _whole(low: int, high: int) -> Check:
    def check(value: Any) -> str | None:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            return f"must be a whole number from {low} to {high}"
        return None
    return check


def _flag(value: Any) -> str | None:
    if isinstance(value, bool) or (isinstance(value, str) and value.lower() in
                                   ("true", "false", "yes", "no", "1", "0", "on", "off")):
        return None
    return "must be true or false"


def _abs_path(value: Any) -> str | None:
    if not isinstance(value, str) or not posixpath.isabs(value) or "\x00" in value:
        return "must be an absolute path"
    return None


def _one_of(*choices: str) -> Check:
    def check(value: Any) -> str | None:
        return None if value in choices else f"must be one of {', '.join(choices)}"
    return check


def _text(value: Any) -> str | None:
    return None if isinstance(value, str) and value.strip() else "must be some text"


_BWLIMIT = _whole(0, 10_000_000)  # KiB/s, as rsync reads it; 0 means no limit
ENGINE_OPTIONS: dict[str, dict[str, Check]] = {
    # checksum: compare file contents, not only size, mtime, ctime and inode, to find
    # changes (slower: every file is read). The engines read spec.options["checksum"].
    "mirror": {"bwlimit": _BWLIMIT, "threads": _whole(1, 64), "checksum": _flag},
    # archive and restic have no bandwidth limit (yet): refused rather than ignored.
    "archive": {"compression": _one_of("zstd", "gzip"), "level": _whole(1, 22)},
    "rsync": {"bwlimit": _BWLIMIT, "checksum": _flag},
    "restic": {"password_file": _abs_path, "cache_dir": _abs_path, "init": _flag,
               "read_data_subset": _text},
}
REQUIRED = {"restic": ("password_file",)}


def option_problems(engine: str, options: Mapping[str, Any]) -> str | None:
    """What is wrong with a job's engine options, in one message, or None."""
    known = ENGINE_OPTIONS.get(engine)
    if known is None:
        return None  # the engine itself is refused elsewhere
    problems = [f"{name} is needed by the {engine} engine"
                for name in REQUIRED.get(engine, ()) if options.get(name) in (None, "")]
    for name, value in options.items():
        check = known.get(name)
        if check is None:
            problems.append(f"{name} is not an option of the {engine} engine (it takes "
                            f"{', '.join(sorted(known))})")
        elif (wrong := check(value)) is not None:
            problems.append(f"{name} {wrong}")
    if engine == "archive" and options.get("compression") == "gzip" \
            and isinstance(options.get("level"), int) and options["level"] > 9:
        problems.append("level must be from 1 to 9 with gzip")
    return "; ".join(problems) or None
