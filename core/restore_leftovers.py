"""What a restore cut off by a crash leaves in its target, and how it is swept.

Restores write each file under a temporary name and rename it into place: the tree
engines under engines.filecopy's short ".bm-" names beside the file, restic in one
".restic-restore-" staging folder directly in the target. A kill leaves those behind.
Only names of that shape made since the cut-off restore began writing are removed, so
a person's own ".bm-0123abcd" from before survives.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from engines.filecopy import is_tmp_name
from engines.fsutil import remove_tree

RESTIC_STAGING = ".restic-restore-"  # engines/restic's mkdtemp prefix in the target
MARGIN = 1.0  # seconds of clock granularity allowed when comparing with the start


def written_names(spec: Mapping[str, Any], path: str | None) -> set[str]:
    """The names a restore writes directly under its target."""
    if path:  # as the engines read it ("/src/x", "./src/x"): not '' or '.', the target
        path = posixpath.normpath("/" + path).lstrip("/") or None
    return ({path.split("/", 1)[0]} if path else
            {posixpath.basename(str(s).rstrip("/")) or "root"
             for s in spec.get("sources") or ()})


def sweep_restore_leftovers(target: Path, written: Iterable[str], since: float) -> int:
    """Remove the temporary names a restore into target left since `since`; count them.

    Runs in a worker thread (it walks what the restore wrote).
    """
    removed = 0
    cutoff = since - MARGIN
    for name in _names(target):
        if name.startswith(RESTIC_STAGING) and _changed_since(target / name, cutoff):
            remove_tree(target / name)
            removed += 1
    for top in written:
        root = target / top
        if not root.is_dir() or root.is_symlink():
            continue
        for folder, dirs, files in os.walk(root):  # symlinks to folders are not followed
            for name in [*files, *(d for d in dirs if os.path.islink(os.path.join(folder, d)))]:
                leftover = Path(folder) / name
                if is_tmp_name(name) and _changed_since(leftover, cutoff):
                    leftover.unlink(missing_ok=True)
                    removed += 1
    return removed


def _names(folder: Path) -> list[str]:
    try:
        return os.listdir(folder)
    except OSError:
        return []


def _changed_since(path: Path, cutoff: float) -> bool:
    try:
        return path.lstat().st_ctime >= cutoff
    except OSError:
        return False
