"""File-system helpers every engine needs: removing trees, spotting a full disk, and
refusing a restore that would overwrite files."""

from __future__ import annotations

import errno
import os
import shutil
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from engines.errors import RestoreConflict
from engines.fsmeta import shown


def is_disk_full(err: OSError) -> bool:
    """Whether an OSError means the destination has no space (or quota) left."""
    return err.errno in (errno.ENOSPC, errno.EDQUOT)


def remove_tree(path: Path) -> None:
    """Remove a file, symlink or tree, including read-only directories inside it."""
    def make_writable(func: Any, p: str, exc: Any) -> None:
        if isinstance(exc[1], FileNotFoundError):
            return  # removed meanwhile (a second clean-up of the same tree): fine
        if func in (os.open, os.scandir, os.listdir):
            # A folder the server owns but cannot list (a snapshot of a mode-000
            # folder, made by a non-root server): open it up, then remove it.
            os.chmod(p, stat.S_IRWXU)
            shutil.rmtree(p, onerror=make_writable)
            return
        if func is os.rmdir and not os.path.lexists(p):
            return  # removed just above
        os.chmod(os.path.dirname(p), stat.S_IRWXU)
        func(p)

    if path.is_symlink() or not path.is_dir():
        path.unlink(missing_ok=True)
    else:
        shutil.rmtree(path, onerror=make_writable)


def refuse_clashes(target: Path, items: Iterable[tuple[str, bool]], overwrite: bool) -> None:
    """Refuse, before anything is written, a restore target that already has what the
    restore would write; `items` are (path inside the snapshot, is a directory)."""
    if target.exists() and not target.is_dir():
        raise RestoreConflict(f"restore target {shown(target)} exists and is not a "
                              "directory")
    if overwrite or not target.is_dir():
        return
    clashes = []
    for rel, is_dir in items:
        try:
            st = (target / rel).lstat()
        except (FileNotFoundError, NotADirectoryError):
            continue
        if is_dir and stat.S_ISDIR(st.st_mode):
            continue  # an existing directory is merged into, not replaced
        clashes.append(rel)
    if clashes:
        sample = ", ".join(shown(c) for c in clashes[:3])
        raise RestoreConflict(
            f"{len(clashes)} file(s) to restore already exist in {shown(target)} ({sample}); "
            "restore into an empty directory, or allow overwriting")
