"""The restic engine: each run is a snapshot in a restic repository, made by the real restic.

The repository is the job's destination (a local path). Options:
    password_file     file holding the repository password (required). The password
                      reaches restic as RESTIC_PASSWORD_FILE in its environment, never
                      in argv, where any local user could read it from /proc.
    init              create the repository on the first backup if it does not exist.
    cache_dir         restic's local cache; default: restic's own (~/.cache/restic).
                      Not under the destination: the cache is per machine, and a cache
                      inside a repository confuses people who copy the repository.
    read_data_subset  for verify on big repositories: restic's --read-data-subset
                      ("10%", "1/5", "2G"); default: read all data.

Layout contract (shared with every engine): a snapshot holds each source under its last
path component. restic stores absolute paths, so the source paths restic saw are kept in
the snapshot's own `paths`, and restore maps `<absolute source>/...` to
`target/<name>/...`: restic restores into a staging directory inside the target (same
file system, so putting the result in place is a rename) and the source's subtree is
moved out of it.

Include and exclude: `engines.scan` decides exactly what a run takes, with the same
semantics as every other engine. restic is then given the sources themselves plus exact,
escaped exclude patterns for what the scan left out. That keeps the snapshot's `paths`
equal to the sources, so restic finds the parent snapshot and skips unchanged files,
which a --files-from list of every file would defeat.

Resume after a crash: running the backup again is the resume. restic deduplicates what
it already has; packs uploaded by the killed run are not in any index yet, so the resume
first indexes them (`restic rebuild-index`) and does not upload them again.

Jobs sharing a repository: each snapshot is tagged with its job, and a job lists,
prunes, restores and verifies only its own (engines.restic_jobs). A backup is only a
success once restic lists the snapshot it reported; a local repository that vanishes
while restic writes to it stops the run within seconds (engines.restic_watch).

Starting and stopping restic (pause, cancel, a child that dies with the server) is in
engines.restic_proc.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import posixpath
import re
import secrets
import signal
import socket
import stat
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from engines.base import (
    BackupResult,
    BackupSpec,
    Cancelled,
    CollectingReporter,
    DestinationNotWritable,
    DiskFull,
    Engine,
    EngineError,
    Interrupted,
    ProgressMeter,
    Reporter,
    RestoreResult,
    RunControl,
    Snapshot,
    SnapshotNotFound,
    VerifyResult,
)
from engines.fsutil import is_disk_full, refuse_clashes, remove_tree
from engines.manifest import check_rel_path
from engines.procs import process_alive, stop_leftover, stop_orphans
from engines.restic_jobs import backup_tags, seen_by, tags_of
from engines.restic_proc import Finished as _Finished
from engines.restic_proc import ResticRepo as _Repo
from engines.restic_proc import has_repository as _has_repository
from engines.restic_proc import repo_for as _repo_for
from engines.restic_proc import restic_binary as _binary
from engines.restic_proc import restic_command as restic_command
from engines.restic_proc import restic_env as restic_env
from engines.restic_proc import restore_keeps_holes
from engines.restic_proc import run_restic as _run
from engines.restic_watch import clear_remnant
from engines.scan import scan

log = logging.getLogger(__name__)

SHORT_ID_LEN = 8
CHECKPOINT_EVERY = 60.0  # checkpoints are stored events: often enough, not chatty
MAX_PROBLEMS = 100
LIST_WORKERS = 4
MAX_OTHER_LINES = 20  # non-JSON lines passed on as warnings before they are only logged
MTIME_SLACK = 2.0  # seconds: file times vs. the run's start, across clock granularity

_ID_RE = re.compile(r"^[0-9a-f]{8,64}$")
_LOCK_NAME_RE = re.compile(r"^[0-9a-f]{64}$")
_CHECK_PROGRESS_RE = re.compile(r"^\[[\d:]+\]\s+([\d.]+)%\s+\d+\s*/\s*\d+\s+packs")
_FRACTION_RE = re.compile(r"(\.\d{6})\d+")

# File counts and sizes per snapshot. restic 0.14 keeps no summary in the snapshot and
# `restic ls` costs a key derivation plus a walk of the trees, but snapshots never change:
# each is counted once per process (or taken from its backup's summary). Keyed by
# (repository, short id), the id the backup summary gives.
_STATS: dict[tuple[str, str], tuple[int, int]] = {}
_STATS_LOCK = threading.Lock()


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


def _failure(repo: _Repo, what: str, fin: _Finished, full_place: Path | None = None
             ) -> EngineError | None:
    """The error for the failures restic explains on stderr (password, lock, space, ...)."""
    text = "\n".join(fin.stderr)
    low = text.lower()
    if "no space left on device" in low or "disk quota exceeded" in low:
        place = full_place or repo.path
        return DiskFull(f"{place} is full (no space left on device); free some space and "
                        "run it again")
    if "wrong password" in low:
        return EngineError(f"the password in {repo.password_file} does not open the restic "
                           f"repository at {repo.path} (wrong password)")
    if ("is there a repository at the following location" in low
            or "unable to open config file" in low):
        return EngineError(f"there is no restic repository at {repo.path}; check the "
                           "destination, or set the init option to create one")
    if "already locked" in low:
        detail = next((line.split("already locked", 1)[1].strip() for line in fin.stderr
                       if "already locked" in line), "")
        return EngineError(f"the restic repository at {repo.path} is in use by another "
                           f"restic process (locked {detail}); wait for it to finish. If no "
                           "restic is running, remove the stale lock with restic unlock")
    if "permission denied" in low and str(repo.path) in text:
        return DestinationNotWritable(f"restic cannot write to {repo.path} "
                                      "(permission denied)")
    if fin.code < 0:
        name = signal.Signals(-fin.code).name if -fin.code in signal.valid_signals() else ""
        return EngineError(f"restic {what} was stopped by signal {name or -fin.code}")
    return None


def _error(repo: _Repo, what: str, fin: _Finished, full_place: Path | None = None
           ) -> EngineError:
    """The clearest error for a restic call that failed."""
    known = _failure(repo, what, fin, full_place)
    if known is not None:
        return known
    lines = [line.removeprefix("Fatal: ") for line in fin.stderr
             if not line.startswith(("using temporary cache", "create exclusive lock"))]
    reason = lines[-1] if lines else "no message"
    return EngineError(f"restic {what} failed (exit code {fin.code}): {reason}")


def _pack_files(repo_path: Path) -> list[os.DirEntry[str]]:
    out: list[os.DirEntry[str]] = []
    with contextlib.suppress(FileNotFoundError), os.scandir(repo_path / "data") as buckets:
        for bucket in buckets:
            if bucket.is_dir(follow_symlinks=False):
                with os.scandir(bucket.path) as packs:
                    out.extend(p for p in packs if p.is_file(follow_symlinks=False))
    return out


def _new_pack_files(repo_path: Path, since: float) -> list[os.DirEntry[str]]:
    """Pack files (and restic's half-written `-tmp-` files) written since a run started."""
    out = []
    for entry in _pack_files(repo_path):
        with contextlib.suppress(FileNotFoundError):
            if entry.stat(follow_symlinks=False).st_mtime >= since - MTIME_SLACK:
                out.append(entry)
    return out


def _remove_half_written(repo_path: Path, since: float) -> None:
    """Remove the `-tmp-` files a killed restic left in data/ (restic ignores them for
    good); only while no restic holds a lock, as a running one may be writing them."""
    with contextlib.suppress(FileNotFoundError):
        if any(_LOCK_NAME_RE.match(n) for n in os.listdir(repo_path / "locks")):
            return
    for entry in _new_pack_files(repo_path, since):
        if "-tmp-" in entry.name:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)


def _stop_orphan(repo: _Repo, resume: Mapping[str, Any] | None) -> None:
    """Kill the restic of a crashed attempt if it is still there: one that was paused
    (SIGSTOP) would stay stopped for good, holding its lock."""
    stop_leftover(resume, "restic", str(repo.path))


def _run_tag(resume: Mapping[str, Any] | None) -> str:
    """The tag this run's snapshot gets: kept from its checkpoint, else a new one."""
    value = resume.get("tag") if resume else None
    if isinstance(value, str) and re.fullmatch(r"bm-[0-9a-f]{16}", value):
        return value
    return f"bm-{secrets.token_hex(8)}"


def _started(resume: Mapping[str, Any] | None) -> float | None:
    value = resume.get("started") if resume else None
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
        return float(value)
    return None


def _parse_time(text: Any) -> datetime:
    """A restic time (RFC 3339 with nanoseconds and any offset) as a UTC datetime."""
    if not isinstance(text, str):
        raise ValueError(f"not a time: {text!r}")
    when = datetime.fromisoformat(_FRACTION_RE.sub(r"\1", text.strip()))
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.astimezone(UTC)


def _count(value: Any) -> int:
    """A non-negative whole number from restic's JSON, 0 when missing or odd."""
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        return 0
    return int(value)


def _json_object(raw: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


# --- paths: what restic stores vs. the names the app shows --------------------------------


def _restic_roots(spec: BackupSpec) -> dict[str, str]:
    """Each source's name -> the absolute path restic is given (parents' symlinks resolved,
    the source itself not, so a symlink source stays a symlink)."""
    roots: dict[str, str] = {}
    for name, src in spec.source_names().items():
        if not src.name:
            roots[name] = "/"
        else:
            roots[name] = posixpath.join(os.path.realpath(src.parent), src.name)
    return roots


def _snapshot_roots(snap: Mapping[str, Any]) -> dict[str, str]:
    """A snapshot's source names -> the absolute paths restic stored them under."""
    roots: dict[str, str] = {}
    for path in snap.get("paths") or ():
        if isinstance(path, str) and path.startswith("/"):
            roots.setdefault(posixpath.basename(path.rstrip("/")) or "root", path)
    return roots


def _rel_in(path: str, roots: Mapping[str, str]) -> str | None:
    """`<name>/<path inside the source>` for an absolute path, None outside every source."""
    for name, root in roots.items():
        if path == root:
            return name
        prefix = root if root.endswith("/") else root + "/"
        if path.startswith(prefix):
            return f"{name}/{path[len(prefix):]}"
    return None


def _excluded_paths(spec: BackupSpec, roots: Mapping[str, str], control: RunControl,
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


def _exclude_args(excluded: Sequence[str]) -> tuple[Path | None, list[str]]:
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


# --- restore helpers ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Node:
    rel: str
    kind: str
    size: int


def _move_into(src: Path, dst: Path) -> None:
    """Put a restored entry at dst: merge directories, replace anything else."""
    try:
        dst_st = dst.lstat()
    except FileNotFoundError:
        os.rename(src, dst)
        return
    src_st = src.lstat()
    if stat.S_ISDIR(dst_st.st_mode) and stat.S_ISDIR(src_st.st_mode):
        for child in os.listdir(src):
            _move_into(src / child, dst / child)
        # The directory that was already there takes the snapshot's metadata, as a fresh
        # one would; its owner only where this process may set it.
        with contextlib.suppress(OSError):
            os.chown(dst, src_st.st_uid, src_st.st_gid)
        os.chmod(dst, stat.S_IMODE(src_st.st_mode))
        os.utime(dst, ns=(src_st.st_atime_ns, src_st.st_mtime_ns))
        return
    remove_tree(dst)
    os.rename(src, dst)


def _check_target(target: Path, nodes: Sequence[_Node], overwrite: bool) -> None:
    """Refuse, before anything is written, a target that has what the restore would write."""
    refuse_clashes(target, ((n.rel, n.kind == "dir") for n in nodes), overwrite)


# --- reading restic backup's output -----------------------------------------------------


class BackupOutput:
    """Turns restic backup's JSON lines into progress, warnings and the final summary.

    restic's totals grow while its scanner walks the sources alongside the upload; they are
    final once it reports `scan_finished` (printed at --verbose=2), or once a status line
    carries `seconds_remaining`, which restic only computes after the scan.
    """

    def __init__(self, meter: ProgressMeter, reporter: Reporter, roots: Mapping[str, str],
                 on_tick: Callable[[], None] | None = None) -> None:
        self.meter = meter
        self.reporter = reporter
        self.roots = roots
        self.on_tick = on_tick
        self.scan_finished = False
        self.summary: dict[str, Any] | None = None
        self._other_lines = 0
        self._last_tick = time.monotonic()

    def display(self, path: str) -> str:
        """A path as the app shows it: `<source name>/<path inside>`."""
        return _rel_in(path, self.roots) or path

    def feed(self, raw: bytes) -> None:
        """Handle one line of restic's stdout; bad or unknown lines never raise."""
        if raw.startswith(b'{"message_type":"verbose_status"') and b"scan_finished" not in raw:
            return  # one line per file: the status lines already carry what progress needs
        msg = _json_object(raw)
        if msg is None:
            self._other(raw)
            return
        kind = msg.get("message_type")
        if msg.get("action") == "scan_finished":
            # restic 0.14 labels this one "status"; later versions "verbose_status". It
            # carries the final totals.
            self.scan_finished = True
            totals = {"files_total": msg["total_files"]} if _count(msg.get("total_files")) \
                else {}
            if _count(msg.get("data_size")):
                totals["bytes_total"] = msg["data_size"]
            self.meter.update(force=True, counting=False, phase="copying", **totals)
        elif kind == "status":
            self._status(msg)
        elif kind == "summary":
            self.summary = msg
            self.meter.update(force=True, phase="finalising", current_file="")
        elif kind == "error":
            self._error(msg)

    def feed_stderr(self, raw: bytes) -> bool:
        """Take restic's per-file JSON errors from stderr as warnings; leave the rest."""
        msg = _json_object(raw) if raw.startswith(b"{") else None
        if msg is None or msg.get("message_type") != "error":
            return False
        self._error(msg)
        return True

    def _status(self, msg: Mapping[str, Any]) -> None:
        if "seconds_remaining" in msg:
            self.scan_finished = True
        files_total, bytes_total = _count(msg.get("total_files")), _count(msg.get("total_bytes"))
        files_done, bytes_done = _count(msg.get("files_done")), _count(msg.get("bytes_done"))
        current = msg.get("current_files")
        current_file = (self.display(current[0]) if isinstance(current, list) and current
                        and isinstance(current[0], str) else "")
        if not self.scan_finished:
            phase = "scanning"
        elif files_done >= files_total and bytes_done >= bytes_total:
            phase = "finalising"  # all read; restic writes the last packs, index, snapshot
        else:
            phase = "copying"
        self.meter.update(phase=phase, counting=not self.scan_finished,
                          files_done=files_done, files_total=files_total,
                          bytes_done=bytes_done, bytes_total=bytes_total,
                          current_file=current_file)
        if self.on_tick is not None and time.monotonic() - self._last_tick >= CHECKPOINT_EVERY:
            self._last_tick = time.monotonic()
            self.on_tick()

    def _error(self, msg: Mapping[str, Any]) -> None:
        item = msg.get("item")
        where = self.display(item) if isinstance(item, str) and item else "an item"
        err = msg.get("error")
        # restic 0.14 serialises most errors as {}: say what is known.
        detail = err.get("message") if isinstance(err, dict) else err
        self.reporter.warning(f"{where} could not be read"
                              + (f": {detail}" if isinstance(detail, str) and detail else ""))

    def _other(self, raw: bytes) -> None:
        line = raw.decode("utf-8", "replace").strip()
        if not line:
            return
        log.warning("restic printed a line that is not JSON: %s", line)
        self._other_lines += 1
        if self._other_lines <= MAX_OTHER_LINES:
            self.reporter.warning(f"restic: {line}")


class _Listing:
    """Reads `restic ls --json <id>`: the snapshot (its first line), then every node,
    counting regular files and their bytes, and keeping the nodes when asked to."""

    def __init__(self, keep_nodes: bool) -> None:
        self.keep_nodes = keep_nodes
        self.snapshot: dict[str, Any] | None = None
        self.roots: dict[str, str] = {}
        self.nodes: list[_Node] = []
        self.files = 0
        self.size = 0

    def feed(self, raw: bytes) -> None:
        """Take one line of the listing."""
        msg = _json_object(raw)
        if msg is None:
            return
        if msg.get("struct_type") == "snapshot" and self.snapshot is None:
            self.snapshot = msg
            self.roots = _snapshot_roots(msg)
            return
        path, kind, size = msg.get("path"), str(msg.get("type", "")), _count(msg.get("size"))
        if not isinstance(path, str):
            return
        if kind == "file":
            self.files += 1
            self.size += size
        if self.keep_nodes:
            rel = _rel_in(path, self.roots)
            if rel is not None:
                self.nodes.append(_Node(rel, kind, size))


# --- the engine -------------------------------------------------------------------------


class ResticEngine(Engine):
    """Snapshots in a restic repository, made, listed, restored and checked by restic."""

    name = "restic"
    resumes_partial = True

    def check_ready(self, spec: BackupSpec) -> None:
        """Raise a clear error if restic is not installed or the password file is unusable."""
        _binary()
        _repo_for(spec)

    # --- restic calls with this engine's policies -----------------------------------------

    def _call(self, repo: _Repo, args: Sequence[str], what: str,
              control: RunControl | None = None,
              on_stdout: Callable[[bytes], None] | None = None,
              on_stderr: Callable[[bytes], bool] | None = None,
              on_start: Callable[[int], None] | None = None,
              ok_codes: Sequence[int] = (0,), full_place: Path | None = None,
              env_extra: Mapping[str, str] | None = None, check: bool = True,
              watch: bool = False) -> _Finished:
        """Run restic; on a lock left by a restic that died, remove it and try once more.
        With `watch`, restic is stopped as soon as the repository vanishes."""
        fin = _run(repo, args, control, on_stdout, on_stderr, on_start, env_extra,
                   what if watch else None)
        if (fin.code not in ok_codes and fin.stopped is None
                and any("already locked" in line for line in fin.stderr)
                and self._remove_dead_locks(repo)):
            fin = _run(repo, args, control, on_stdout, on_stderr, on_start, env_extra,
                       what if watch else None)
        if check and fin.code not in ok_codes and fin.stopped is None:
            raise _error(repo, what, fin, full_place)
        return fin

    def _output(self, repo: _Repo, args: Sequence[str], what: str) -> bytes:
        chunks: list[bytes] = []
        self._call(repo, args, what, on_stdout=chunks.append)
        return b"".join(chunks)

    def _remove_dead_locks(self, repo: _Repo) -> int:
        """Remove locks of restic processes on this machine that no longer run; return how
        many. `restic unlock` would also remove locks merely older than 30 minutes, which
        includes the lock of a backup paused that long: not safe with pause."""
        locks = repo.path / "locks"
        try:
            names = [n for n in os.listdir(locks) if _LOCK_NAME_RE.match(n)]
        except OSError:
            return 0
        host = socket.gethostname()
        removed = 0
        for name in names:
            chunks: list[bytes] = []
            fin = _run(repo, ["cat", "lock", name, "--no-lock"], on_stdout=chunks.append)
            lock = _json_object(b"".join(chunks)) if fin.code == 0 else None
            if lock is None or lock.get("hostname") != host:
                continue  # gone already, or another machine's: this one cannot tell
            pid = lock.get("pid")
            if not isinstance(pid, int) or process_alive(pid):
                continue
            with contextlib.suppress(FileNotFoundError):
                (locks / name).unlink()
                log.info("removed the lock of restic process %s, which no longer runs", pid)
                removed += 1
        return removed

    def _ensure_repository(self, repo: _Repo, control: RunControl) -> None:
        if _has_repository(repo.path):
            return
        if not repo.init:
            raise EngineError(f"there is no restic repository at {repo.path}; create one "
                              "with restic init, or set the init option to let the backup "
                              "create it")
        with os.scandir(repo.path) as entries:
            if any(True for _ in entries):
                raise EngineError(f"destination {repo.path} is not empty and holds no restic "
                                  "repository; choose an empty directory for a new one")
        fin = self._call(repo, ["init"], "init", control=control, check=False)
        if fin.code != 0 or not _has_repository(repo.path):
            # The directory was empty: clear a half-made repository so the next run can
            # create it instead of finding a non-empty directory.
            for entry in os.listdir(repo.path):
                remove_tree(repo.path / entry)
            self._raise_if_stopped(fin, "backup")
            raise _error(repo, "init", fin)

    def _list(self, repo: _Repo, job_id: str, *ids: str) -> list[dict[str, Any]]:
        """The snapshots the job sees (all of them, or those of `ids`) as restic describes
        them (with a parseable time)."""
        try:
            data = json.loads(self._output(repo, ["--no-lock", "snapshots", "--json", *ids],
                                           "snapshots"))
        except ValueError as err:
            raise EngineError(f"restic snapshots printed something that is not JSON: "
                              f"{err}") from err
        out = []
        for snap in data if isinstance(data, list) else ():
            if not isinstance(snap, dict) or not isinstance(snap.get("id"), str):
                continue
            try:
                _parse_time(snap.get("time"))
            except ValueError:
                log.warning("restic snapshot %s has an unreadable time; skipped", snap["id"])
                continue
            if seen_by(snap, job_id):
                out.append(snap)
        return out

    def _stats(self, repo: _Repo, snap: Mapping[str, Any]) -> tuple[int, int]:
        """Regular files and their bytes in a snapshot (restic >= 0.17 stores a summary)."""
        summary = snap.get("summary")
        if isinstance(summary, dict) and "total_files_processed" in summary:
            return (_count(summary.get("total_files_processed")),
                    _count(summary.get("total_bytes_processed")))
        key = (str(repo.path), str(snap["id"])[:SHORT_ID_LEN])
        with _STATS_LOCK:
            known = _STATS.get(key)
        if known is not None:
            return known
        listing = self._listing(repo, str(snap["id"]), None, keep_nodes=False, job_id="")
        return listing.files, listing.size

    def _listing(self, repo: _Repo, snapshot_id: str, control: RunControl | None,
                 keep_nodes: bool, job_id: str) -> _Listing:
        """List a snapshot of the job (one restic call that also tells whether the id
        exists)."""
        if not isinstance(snapshot_id, str) or not _ID_RE.match(snapshot_id):
            raise SnapshotNotFound(f"{str(snapshot_id)[:80]!r} is not a restic snapshot id")
        if not _has_repository(repo.path):
            raise SnapshotNotFound(f"no snapshot {snapshot_id}: there is no restic "
                                   f"repository at {repo.path}")
        listing = _Listing(keep_nodes)
        fin = self._call(repo, ["ls", "--json", snapshot_id], "ls", control=control,
                         on_stdout=listing.feed)
        self._raise_if_stopped(fin, "listing")
        snap = listing.snapshot
        if snap is None or not isinstance(snap.get("id"), str) or not seen_by(snap, job_id):
            # Another job's snapshot in a shared repository is not this job's to see.
            # restic ls says "no matching ID found" on stderr and exits 0.
            raise SnapshotNotFound(f"no snapshot {snapshot_id} in the restic repository at "
                                   f"{repo.path}")
        with _STATS_LOCK:
            _STATS[(str(repo.path), snap["id"][:SHORT_ID_LEN])] = (listing.files, listing.size)
        return listing

    def _adopt_partial_upload(self, repo: _Repo, resume: Mapping[str, Any],
                              warn: Reporter) -> None:
        """Before a resume: drop dead locks and index what the interrupted run uploaded."""
        _stop_orphan(repo, resume)
        self._remove_dead_locks(repo)
        since = _started(resume)
        if since is None or not _new_pack_files(repo.path, since):
            return
        try:
            self._call(repo, ["rebuild-index"], "rebuild-index")
        except EngineError as err:
            warn.warning(f"the data uploaded before the interruption could not be reused "
                         f"({err}); it is uploaded again")
        _remove_half_written(repo.path, since)

    def _drop_partial_upload(self, repo: _Repo, since: float, warn: Reporter) -> None:
        """After a cancel or a full disk: remove the packs the unfinished run uploaded."""
        if not _new_pack_files(repo.path, since):
            return
        self._remove_dead_locks(repo)
        try:
            # Unindexed packs are unreferenced: prune deletes them first, before it needs
            # space for anything. `unlimited` keeps it from repacking anything else.
            self._call(repo, ["prune", "--max-unused", "unlimited"], "prune")
        except EngineError as err:
            warn.warning(f"restic could not remove what the unfinished backup uploaded "
                         f"({err}); the next prune will")
            return
        _remove_half_written(repo.path, since)

    # --- backup -------------------------------------------------------------------------

    def backup(self, spec: BackupSpec, control: RunControl, reporter: Reporter,
               resume: Mapping[str, Any] | None = None) -> BackupResult:
        """Make a restic snapshot of the sources; with a checkpoint, reuse what was uploaded."""
        started = time.monotonic()
        repo = _repo_for(spec)
        spec.check_sources()
        spec.check_destination()
        stop_orphans("restic", str(repo.path))
        # The first attempt's start: what any attempt of this run uploaded is newer.
        since = _started(resume) or time.time()
        warn = CollectingReporter(reporter)
        meter = ProgressMeter(warn)
        meter.update(force=True, phase="scanning", counting=True)
        control.safe_point()
        self._ensure_repository(repo, control)
        control.safe_point()
        # Every attempt of one run tags its snapshot alike, so a resume after a crash
        # that came once restic had finished takes that snapshot instead of a second.
        tag = _run_tag(resume)
        if resume is not None:
            _stop_orphan(repo, resume)  # first: a restic still running could yet finish
            done = self._snapshot_tagged(repo, tag, spec.job_id, started)
            if done is not None:
                return done
            self._adopt_partial_upload(repo, resume, warn)
        roots = _restic_roots(spec)
        checkpoint: dict[str, Any] = {"engine": self.name, "repository": str(repo.path),
                                      "started": since, "tag": tag}

        def started_restic(pid: int) -> None:
            # The pid lets a resume or a discard stop the restic of a run that lost its
            # worker (see _stop_orphan).
            checkpoint["pid"] = pid
            reporter.checkpoint(dict(checkpoint))

        exclude_file: Path | None = None
        try:
            args = ["backup", "--json", "--verbose=2", *backup_tags(spec.job_id, tag)]
            if spec.include or spec.exclude:
                exclude_file, flags = _exclude_args(
                    _excluded_paths(spec, roots, control, warn))
                args += flags
            args += ["--", *roots.values()]
            output = BackupOutput(meter, warn, roots)
            output.on_tick = lambda: reporter.checkpoint(
                {**checkpoint, "files_done": meter.state.files_done,
                 "bytes_done": meter.state.bytes_done})
            fin = self._call(repo, args, "backup", control=control, on_stdout=output.feed,
                             on_stderr=output.feed_stderr, on_start=started_restic,
                             ok_codes=(0, 3), check=False, watch=True)
        finally:
            if exclude_file is not None:
                exclude_file.unlink(missing_ok=True)
        if fin.stopped == "vanished":
            clear_remnant(repo.path)
            raise EngineError(f"{fin.reason}; restic was stopped and no snapshot was made")
        summary = output.summary
        if fin.code in (0, 3) and summary is not None:
            # A snapshot exists, even if cancel came too late to stop it: report it, once
            # restic lists it (a repository that vanished after all is caught there).
            self._confirm(repo, spec.job_id, summary.get("snapshot_id"), tag)
            return self._finish(repo, meter, warn, summary, fin, started)
        if fin.stopped == "cancel":
            self._drop_partial_upload(repo, since, warn)
            raise Cancelled("the backup was cancelled; restic made no snapshot")
        if fin.stopped == "interrupt":
            raise Interrupted("the backup was interrupted; run it again to resume (restic "
                              "reuses what it uploaded)")
        if fin.code in (0, 3):
            raise EngineError("restic backup finished without reporting its snapshot")
        err = _error(repo, "backup", fin, full_place=repo.path)
        if isinstance(err, DiskFull):
            self._drop_partial_upload(repo, since, warn)
        elif fin.code < 0:
            err = EngineError(f"{err}; run the backup again to resume")
        raise err

    def _confirm(self, repo: _Repo, job_id: str, snapshot_id: Any, tag: str) -> None:
        """Raise unless restic lists the snapshot it reported, with this run's tag."""
        if not isinstance(snapshot_id, str) or not _ID_RE.match(snapshot_id):
            raise EngineError("restic backup finished without reporting its snapshot id")
        why = ""
        if not _has_repository(repo.path):
            why = f"the repository {repo.path} is gone (it vanished during the backup)"
        else:
            try:
                listed = self._list(repo, job_id, snapshot_id)
            except EngineError as err:
                listed, why = [], f"the repository cannot be listed: {err}"
            if any(tag in tags_of(s) for s in listed):
                return
        raise EngineError(f"restic reported snapshot {snapshot_id}, but it cannot be found "
                          f"in the repository at {repo.path} afterwards"
                          + (f": {why}" if why else "") + "; nothing of this run can be "
                          "restored, run the backup again")

    def _finish(self, repo: _Repo, meter: ProgressMeter, warn: CollectingReporter,
                summary: Mapping[str, Any], fin: _Finished, started: float) -> BackupResult:
        snapshot_id = summary.get("snapshot_id")
        if not isinstance(snapshot_id, str) or not snapshot_id:
            raise EngineError("restic backup finished without reporting its snapshot id")
        if fin.code == 3:
            warn.warning("some source files could not be read; the snapshot was made "
                         "without them")
        files = _count(summary.get("total_files_processed"))
        nbytes = _count(summary.get("total_bytes_processed"))
        if fin.code == 0:  # every file made it in: the summary is what `ls` would count
            with _STATS_LOCK:
                _STATS[(str(repo.path), snapshot_id[:SHORT_ID_LEN])] = (files, nbytes)
        meter.update(force=True, phase="done", counting=False, files_done=files,
                     files_total=files, bytes_done=nbytes, bytes_total=nbytes, current_file="")
        # The whole run (repository set-up and selection included), like the other engines.
        return BackupResult(snapshot_id[:SHORT_ID_LEN], files, nbytes,
                            time.monotonic() - started, tuple(warn.warnings))

    # --- listing ------------------------------------------------------------------------

    def _snapshot_tagged(self, repo: _Repo, tag: str, job_id: str, started: float
                         ) -> BackupResult | None:
        """The snapshot an earlier attempt of this run finished, if there is one."""
        for snap in self._list(repo, job_id):
            if tag in (snap.get("tags") or []):
                files, size = self._stats(repo, snap)
                short = snap.get("short_id")
                snap_id = short if isinstance(short, str) and short else snap["id"][:SHORT_ID_LEN]
                return BackupResult(snap_id, files, size, time.monotonic() - started)
        return None

    def snapshots(self, spec: BackupSpec) -> list[Snapshot]:
        """List the repository's snapshots, oldest first (none before the first backup)."""
        repo = _repo_for(spec)
        if not _has_repository(repo.path):
            return []
        snaps = self._list(repo, spec.job_id)
        # Counting a snapshot not seen yet is one restic call each, mostly key derivation:
        # CPU-bound and single-threaded in restic, so a few run side by side.
        with ThreadPoolExecutor(max_workers=LIST_WORKERS, thread_name_prefix="restic") as pool:
            stats = list(pool.map(lambda snap: self._stats(repo, snap), snaps))
        out = []
        for snap, (files, size) in zip(snaps, stats, strict=True):
            short = snap.get("short_id")
            out.append(Snapshot(short if isinstance(short, str) and short
                                else snap["id"][:SHORT_ID_LEN],
                                _parse_time(snap["time"]), files, size))
        return sorted(out, key=lambda s: (s.time, s.id))

    # --- restore ------------------------------------------------------------------------

    @staticmethod
    def _raise_if_stopped(fin: _Finished, what: str) -> None:
        if fin.stopped == "cancel" and fin.code != 0:
            raise Cancelled(f"the {what} was cancelled")
        if fin.stopped == "interrupt" and fin.code != 0:
            raise Interrupted(f"the {what} was interrupted")

    def restore(self, spec: BackupSpec, snapshot_id: str, target: Path, control: RunControl,
                reporter: Reporter, path: str | None = None,
                overwrite: bool = False) -> RestoreResult:
        """Restore a snapshot, or one path in it, to target/<source name>/..."""
        repo = _repo_for(spec)
        rel = check_rel_path(path) if path else ""
        meter = ProgressMeter(reporter)
        meter.update(force=True, phase="scanning", counting=True)
        listing = self._listing(repo, snapshot_id, control, keep_nodes=True, job_id=spec.job_id)
        snap, roots, nodes = listing.snapshot or {}, listing.roots, listing.nodes
        name, _, inner = rel.partition("/")
        if rel and name not in roots:
            raise SnapshotNotFound(f"{path} is not in snapshot {snapshot_id}")
        if rel:
            ancestors = {"/".join(rel.split("/")[:i]) for i in range(1, rel.count("/") + 1)}
            chosen = [n for n in nodes if n.rel == rel or n.rel.startswith(rel + "/")]
            if not chosen:
                raise SnapshotNotFound(f"{path} is not in snapshot {snapshot_id}")
            # restic restores the parents of the path too (as directories).
            nodes = [n for n in nodes if n.rel in ancestors] + chosen
        files = [n for n in nodes if n.kind == "file"]
        total_files, total_bytes = len(files), sum(n.size for n in files)
        _check_target(target, nodes, overwrite)
        try:
            target.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=".restic-restore-", dir=target))
        except OSError as err:
            raise EngineError(f"restore target {target} cannot be written: "
                              f"{err.strerror}") from err
        # restic 0.14 restore reports no progress: say what is coming, then when it is done.
        meter.update(force=True, phase="restoring", counting=False, files_total=total_files,
                     bytes_total=total_bytes)
        try:
            args = ["restore", str(snap["id"]), "--target", str(staging)]
            if restore_keeps_holes(_binary()):
                args.append("--sparse")  # sparse files keep their holes (issue 12)
            if rel:
                args.append(f"--include={restic_pattern(posixpath.join(roots[name], inner))}")
            fin = self._call(repo, args, "restore", control=control, full_place=target,
                             check=False)
            self._raise_if_stopped(fin, "restore")
            if fin.code != 0:
                raise _error(repo, "restore", fin, full_place=target)
            meter.update(force=True, phase="finalising")
            for source in ([name] if rel else list(roots)):
                staged = staging / roots[source].lstrip("/")
                if os.path.lexists(staged):
                    _move_into(staged, target / source)
        except OSError as err:
            if is_disk_full(err):
                raise DiskFull(f"restore target {target} is full ({err.strerror})") from err
            raise EngineError(f"restore into {target} failed: {err.strerror} "
                              f"({err.filename})") from err
        finally:
            with contextlib.suppress(FileNotFoundError):
                remove_tree(staging)
        meter.update(force=True, phase="done", files_done=total_files, bytes_done=total_bytes,
                     current_file="")
        return RestoreResult(total_files, total_bytes)

    # --- verify, delete, clean up -----------------------------------------------------

    def verify(self, spec: BackupSpec, snapshot_id: str, control: RunControl,
               reporter: Reporter) -> VerifyResult:
        """Check the repository and read back its data (restic check --read-data)."""
        repo = _repo_for(spec)
        # A check a killed server left running holds an exclusive lock: stop it first.
        stop_orphans("restic", str(repo.path))
        files = self._listing(repo, snapshot_id, control, keep_nodes=False,
                              job_id=spec.job_id).files
        data_bytes = 0
        for entry in _pack_files(repo.path):
            with contextlib.suppress(FileNotFoundError):
                data_bytes += entry.stat(follow_symlinks=False).st_size
        meter = ProgressMeter(reporter)
        # check reads every pack; its progress is a share of the repository's data.
        meter.update(force=True, phase="verifying", counting=False, files_total=files,
                     bytes_total=data_bytes)

        def progress(raw: bytes) -> None:
            found = _CHECK_PROGRESS_RE.match(raw.decode("utf-8", "replace").strip())
            if found:
                share = min(1.0, float(found.group(1)) / 100)
                meter.update(bytes_done=int(share * data_bytes))

        args = ["check", f"--read-data-subset={repo.read_data_subset}"
                if repo.read_data_subset else "--read-data"]
        # Without a terminal restic prints check progress only when asked for a rate.
        fin = self._call(repo, args, "check", control=control, on_stdout=progress,
                         env_extra={"RESTIC_PROGRESS_FPS": "2"}, check=False)
        self._raise_if_stopped(fin, "verification")
        if fin.code == 0:
            meter.update(force=True, phase="done", files_done=files, bytes_done=data_bytes)
            return VerifyResult(True, (), files)
        known = _failure(repo, "check", fin)
        if known is not None and not isinstance(known, DestinationNotWritable):
            raise known
        problems = tuple(line for line in fin.stderr
                         if not line.startswith(("using temporary cache", "create exclusive")))
        meter.update(force=True, phase="done")
        return VerifyResult(False, problems[:MAX_PROBLEMS] or
                            (f"restic check failed with exit code {fin.code}",), files)

    def delete_snapshots(self, spec: BackupSpec, snapshot_ids: Sequence[str]) -> None:
        """Forget snapshots and prune the data only they used."""
        if not snapshot_ids:
            return
        repo = _repo_for(spec)
        if not _has_repository(repo.path):
            raise SnapshotNotFound(f"there is no restic repository at {repo.path}")
        stop_orphans("restic", str(repo.path))
        known = [str(s["id"]) for s in self._list(repo, spec.job_id)]
        full = []
        for snap_id in snapshot_ids:
            found = [k for k in known if _ID_RE.match(snap_id) and k.startswith(snap_id)]
            if len(found) != 1:
                raise SnapshotNotFound(f"no snapshot {snap_id[:80]} in the restic repository "
                                       f"at {repo.path}")
            full.append(found[0])
        self._call(repo, ["forget", "--prune", *full], "forget")

    def discard_partial(self, spec: BackupSpec, resume: Mapping[str, Any] | None = None) -> None:
        """Remove what an interrupted backup left: its dead lock and its uploaded packs."""
        repo = _repo_for(spec)
        if not _has_repository(repo.path):
            return
        stop_orphans("restic", str(repo.path))
        _stop_orphan(repo, resume)
        self._remove_dead_locks(repo)
        since = _started(resume)
        if since is not None:
            self._drop_partial_upload(repo, since, _LogReporter())


class _LogReporter:
    """A reporter for clean-ups nobody watches: warnings go to the log."""

    def progress(self, progress: Any) -> None:
        """Drop a progress update."""

    def checkpoint(self, state: Mapping[str, Any]) -> None:
        """Drop a checkpoint."""

    def warning(self, message: str) -> None:
        """Log a warning."""
        log.warning("%s", message)
