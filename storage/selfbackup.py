"""A consistent copy of the backup manager's own state (`backup-manager events backup`).

Copying events.db with cp while the server runs can catch the database and its -wal
file at different moments. This takes the copy through SQLite's backup API from a
read-only connection, checks the copy's hash chain, writes the acknowledged mark that
matches it, and rebuilds the YAML projections from the copy, so the folder it makes is
a data directory a server starts on as it is.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

from events import audit
from events.watermark import MarkWriter
from models.atomic import fsync_dir
from storage.replay import replay_into

# Kept with the log: scripts keep working with the same access token after a restore.
# (secret.key only signs form tokens and sessions; a new one just signs browsers out.)
PRIVATE_FILES = ("access-token", "secret.key")


class SelfBackupError(Exception):
    """The copy could not be made; nothing was left at the target."""


class LogDamaged(SelfBackupError):
    """The log's hash chain is broken, so no copy of it was made."""


@dataclass(frozen=True)
class SelfBackup:
    """What a copy holds."""

    path: Path
    events: int
    last_seq: int
    head_hash: str
    jobs: int


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def backup_state(data_dir: Path, out: Path) -> SelfBackup:
    """Copy the event log, its mark, projections and token into a new folder `out`."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise SelfBackupError(f"{out} is not an empty directory; a copy goes into a new or "
                              "empty one so it never mixes with an older copy")
    db = data_dir / "events.db"
    # Built beside the target and renamed into place: a copy cut off half-way is never
    # mistaken for a whole one.
    work = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    # Private like the data directory: the copy names every source, destination and
    # webhook, whatever the umask of the cron job that makes it.
    work.mkdir(mode=0o700)
    try:
        result = _copy_into(data_dir, db, work)
        if out.exists():
            out.rmdir()
        work.rename(out)
        fsync_dir(out.parent)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return SelfBackup(out, result.checked, result.checked, result.head_hash,
                      _count_jobs(out))


def _copy_into(data_dir: Path, db: Path, work: Path) -> audit.VerifyResult:
    copy = work / "events.db"
    with closing(audit.open_readonly(db)) as source, closing(sqlite3.connect(copy)) as target:
        source.backup(target)  # one consistent read of the log, whatever is appending
        # Everything in the one file, no -wal or -shm beside it (the server switches
        # the log back to WAL when it opens it).
        target.execute("PRAGMA journal_mode=DELETE")
    with closing(audit.open_readonly(copy)) as conn:
        result = audit.verify(conn)
        if not result.ok:
            raise LogDamaged(f"the event log is damaged at seq {result.bad_seq} "
                                  f"({result.reason}); run `events verify` — nothing copied")
        mark = MarkWriter(copy)
        try:
            mark.write(result.checked, result.head_hash)
        finally:
            mark.close()
        replay_into(conn, work)
    for name in PRIVATE_FILES:
        if (data_dir / name).is_file():
            shutil.copyfile(data_dir / name, work / name)
            os.chmod(work / name, 0o600)
    for path in work.rglob("*"):
        if path.is_file():
            os.chmod(path, 0o600)
            _fsync(path)
        elif path.is_dir():
            os.chmod(path, 0o700)
    for folder in [work, *(p for p in work.rglob("*") if p.is_dir())]:
        fsync_dir(folder)
    return result


def _count_jobs(out: Path) -> int:
    jobs = out / "jobs"
    return sum(1 for _ in jobs.glob("*.yaml")) if jobs.is_dir() else 0
