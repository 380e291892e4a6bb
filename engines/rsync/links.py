"""Hard links between files of different sources, in an rsync snapshot.

engines.rsync.engine runs one rsync per source, so `--hard-links` only sees links inside one
source: a file linked into two sources arrives as two copies. This pass, after the
copies and before the manifest is written, links every later name of one source file to
its first name in the partial snapshot; the manifest then records the `link`, and a
restore makes the link again, as mirror, archive and restic do.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Sequence
from pathlib import Path

from engines.scan import Entry


def link_across_sources(partial: Path, entries: Sequence[Entry], scratch: Path) -> int:
    """Make names of one source file in different sources one inode; return how many
    names were relinked. `scratch` is a directory in the partial snapshot for the new
    link before it replaces the copy (not beside it: a source may hold any name)."""
    groups: dict[tuple[int, int], list[Entry]] = {}
    for entry in entries:
        if entry.kind == "file" and entry.nlink > 1:
            groups.setdefault((entry.dev, entry.ino), []).append(entry)
    relinked = 0
    for group in groups.values():
        if len({e.rel.split("/", 1)[0] for e in group}) < 2:
            continue  # all in one source: rsync's -H already linked them
        leader = partial / group[0].rel
        try:
            lead = leader.lstat()
        except FileNotFoundError:
            continue  # vanished while copying: nothing to link to
        if not stat.S_ISREG(lead.st_mode):
            continue
        for entry in group[1:]:
            relinked += _link(leader, lead, partial / entry.rel, scratch / "link")
    return relinked


def _link(leader: Path, lead: os.stat_result, target: Path, temp: Path) -> int:
    """Replace `target` by a link to `leader` (only its name in the partial snapshot
    changes: a copy hard-linked to the previous snapshot keeps its content there)."""
    try:
        st = target.lstat()
    except FileNotFoundError:
        return 0
    if not stat.S_ISREG(st.st_mode) or (st.st_dev, st.st_ino) == (lead.st_dev, lead.st_ino):
        return 0
    with contextlib.suppress(FileNotFoundError):
        temp.unlink()  # left by a run that was killed here
    os.link(leader, temp)
    os.replace(temp, target)  # atomic: the name is a file throughout
    return 1
