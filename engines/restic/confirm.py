"""Finding the snapshot a restic backup just reported, without another restic run.

Every restic command pays a key derivation (a third of a second and more here), so
asking restic to list the snapshot again cost a small backup a tenth of its time. A
restic repository stores each snapshot as snapshots/<id>, the id being the SHA-256 of
the file's (encrypted) bytes: a file of that name whose bytes still hash to its name is
exactly what restic wrote, intact and readable. That restic can decrypt it is shown
when the run is confirmed afterwards (core lists the destination through restic).
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

_FULL_ID = re.compile(r"[0-9a-f]{64}")
_READ = 1 << 16


def snapshot_file_intact(repo_path: Path, snapshot_id: str) -> str:
    """Empty when a snapshot file starting with `snapshot_id` is there and hashes to its
    name; else why not, in words."""
    folder = repo_path / "snapshots"
    try:
        names = [n for n in os.listdir(folder)
                 if n.startswith(snapshot_id) and _FULL_ID.fullmatch(n)]
    except OSError as err:
        return f"its snapshots folder cannot be read: {err.strerror or err}"
    if not names:
        return "no snapshot file of that id is there"
    why = ""
    for name in names:
        try:
            digest = hashlib.sha256()
            with open(folder / name, "rb") as fh:
                while chunk := fh.read(_READ):
                    digest.update(chunk)
        except OSError as err:
            why = f"its snapshot file cannot be read: {err.strerror or err}"
            continue
        if digest.hexdigest() == name:
            return ""
        why = "its snapshot file is damaged (its content does not match its name)"
    return why
