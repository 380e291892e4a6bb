"""What restic is given to back up: the absolute source paths, and exact exclude patterns
for what engines.scan left out (the same selection as every other engine).

restic is given the sources themselves plus exact, escaped exclude patterns, not a
--files-from list of every file: the snapshot's `paths` stay equal to the sources, so
restic finds the parent snapshot and skips unchanged files.
"""

from __future__ import annotations

import os
import posixpath
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from engines.contract import BackupSpec
from engines.control import RunControl
from engines.progress import Reporter
from engines.scan import scan

# --- restic patterns ----------------------------------------------------------------


def restic_pattern(path: str, in_file: bool = False) -> str:
    """An exclude/include pattern that matches exactly one absolute path.

    restic matches patterns with Go's filepath.Match, where a backslash makes the next
    character literal. Lines of an --exclude-file also go through env expansion ($$ is
    a literal $) and are stripped of surrounding white space, so a trailing white-space
    character is written as a one-character class.
    """
    out = "".join("\\" + ch if ch in "\\*?[" else ch for ch in path)
    if in_file:
        out = out.replace("$", "$$")
        if out and out[-1].isspace():
            out = f"{out[:-1]}[{out[-1]}]"
    return out


# --- paths ---------------------------------------------------------------------------------


def restic_roots(spec: BackupSpec) -> dict[str, str]:
    """Each source's name -> the absolute path restic is given (parents' symlinks resolved,
    the source itself not, so a symlink source stays a symlink)."""
    roots: dict[str, str] = {}
    for name, src in spec.source_names().items():
        if not src.name:
            roots[name] = "/"
        else:
            roots[name] = posixpath.join(os.path.realpath(src.parent), src.name)
    return roots


def excluded_paths(spec: BackupSpec, roots: Mapping[str, str], control: RunControl,
                    reporter: Reporter) -> list[str]:
    """The absolute paths to exclude so restic takes exactly what engines.scan selects:
    every entry the scan left out whose parent it kept (a left-out directory covers its
    subtree)."""
    entries = scan(spec, control, reporter)
    kept = {e.rel for e in entries}
    excluded: list[str] = []
    for entry in entries:
        if entry.kind != "dir":
            continue
        try:
            names = os.listdir(entry.path)
        except OSError:
            continue  # the scan already warned about it
        name, _, inner = entry.rel.partition("/")
        base = posixpath.join(roots[name], inner) if inner else roots[name]
        excluded.extend(posixpath.join(base, child) for child in names
                        if f"{entry.rel}/{child}" not in kept)
    return excluded


def exclude_args(excluded: Sequence[str]) -> tuple[Path | None, list[str]]:
    """Write the patterns to an --exclude-file (argv has a size limit); the rare name with
    a line break goes in argv, since a pattern file holds one pattern per line."""
    flags = [f"--exclude={restic_pattern(p)}" for p in excluded if "\n" in p or "\r" in p]
    lines = [restic_pattern(p, in_file=True) for p in excluded
             if "\n" not in p and "\r" not in p]
    if not lines:
        return None, flags
    fd, name = tempfile.mkstemp(prefix="restic-exclude-", suffix=".txt")
    with os.fdopen(fd, "wb") as fh:
        fh.write(b"".join(os.fsencode(line) + b"\n" for line in lines))
    return Path(name), [f"--exclude-file={name}", *flags]
