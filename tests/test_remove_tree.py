"""Removing a snapshot that holds folders the server cannot list (issue 12)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from engines.fsutil import remove_tree
from tests.fs_helpers import needs_root

NOBODY = 65534


def _chown_tree(root: Path, uid: int) -> None:
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            os.lchown(os.path.join(dirpath, name), uid, uid)
    os.lchown(root, uid, uid)


@needs_root
def test_a_non_root_server_removes_a_snapshot_with_mode_000_folders() -> None:
    """A snapshot of a mode-000 folder (owned by the server) can still be pruned."""
    # Not under pytest's tmp_path: its parents are private to root, and the child
    # running as nobody must reach the snapshot.
    top = Path(tempfile.mkdtemp(prefix="bm-rmtree-", dir="/tmp"))
    try:
        os.chmod(top, 0o755)
        os.chown(top, NOBODY, NOBODY)  # the destination belongs to the server's user
        _remove_as_nobody(top / "snap")
    finally:
        shutil.rmtree(top, ignore_errors=True)


def _remove_as_nobody(snap: Path) -> None:
    (snap / "a" / "locked" / "deeper").mkdir(parents=True)
    (snap / "a" / "locked" / "deeper" / "f.txt").write_text("x")
    (snap / "a" / "locked" / "g.txt").write_text("y")
    (snap / "readonly").mkdir()
    (snap / "readonly" / "h.txt").write_text("z")
    _chown_tree(snap, NOBODY)
    os.chmod(snap / "a" / "locked" / "deeper", 0)
    os.chmod(snap / "a" / "locked", 0)
    os.chmod(snap / "readonly", 0o500)
    pid = os.fork()
    if pid == 0:  # the child is the server, as an unprivileged user
        code = 1
        try:
            os.setgroups([])
            os.setresgid(NOBODY, NOBODY, NOBODY)
            os.setresuid(NOBODY, NOBODY, NOBODY)
            remove_tree(snap)
            code = 0
        except BaseException as err:  # reported through the exit code
            os.write(2, f"remove_tree failed: {err!r}\n".encode())
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert not snap.exists()
