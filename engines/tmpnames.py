"""The short temporary names files are written under before they are renamed into place.

One rule for every engine: ".bm-" and 8 hex digits, fixed-length, so a name near NAME_MAX
(255 bytes) never grows past it while it is written (issue 12, item 4). A backup draws a
random one (two writers never pick the same); a restore derives it from the final name,
so restoring again finds and removes what a killed restore left (issue 12, item 13).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
from pathlib import Path

TMP_PREFIX = ".bm-"
TMP_LEN = len(TMP_PREFIX) + 8


def tmp_name() -> str:
    """A new random temporary file name (so two writers never pick the same one)."""
    return f"{TMP_PREFIX}{secrets.token_hex(4)}"


def is_tmp_name(name: str) -> bool:
    """Whether a name looks like one of ours (or the longer ones used before)."""
    return (len(name) == TMP_LEN and name.startswith(TMP_PREFIX)) or \
        name.startswith(".bm-tmp-")


def derived_tmp(leaf: str) -> str:
    """The temporary name a restore writes the entry named `leaf` under: the same every time."""
    return f"{TMP_PREFIX}{hashlib.sha256(os.fsencode(leaf)).hexdigest()[:8]}"


def derived_tmp_path(out: str | Path) -> str:
    """derived_tmp's name beside the path `out` (nothing is removed)."""
    head, leaf = os.path.split(os.fspath(out))
    return os.path.join(head, derived_tmp(leaf))


def restore_tmp(out: str | Path) -> str:
    """derived_tmp_path(out), with whatever a killed restore left under it removed first
    (random names would stay in the user's folder)."""
    tmp = derived_tmp_path(out)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    return tmp
