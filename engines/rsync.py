"""The rsync engine: dated snapshot directories made by the real `rsync`, like mirror's.

Same layout as the mirror engine (see engines.treestore), so listing, restore, verify,
delete and prune are TreeSnapshots'. A run:

1. scans the sources with engines.scan (the same include/exclude code as mirror), which
   gives exact totals for progress before any byte moves, and the list of paths;
2. runs `rsync --files-from` per source into `<id>.partial/<source name>/`, with
   `--link-dest` at the same source in the previous complete snapshot, so unchanged files
   are hard links and only changes take space;
3. walks what rsync wrote and builds the manifest, taking hashes from the previous
   manifest for files that are hard links to the previous snapshot (same inode);
4. syncs, writes the manifest, renames `<id>.partial` to `<id>`, syncs the directory.

Resume after a crash or an interrupt: the checkpoint names the partial directory, and
rsync's quick check (size and mtime) leaves every file that was already finished alone;
only the file in flight and those not reached are copied.
"""

from __future__ import annotations

import codecs
import contextlib
import errno
import os
import re
import shutil
import signal
import stat
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from engines.base import (
    BackupResult,
    BackupSpec,
    BinaryMissing,
    Cancelled,
    CollectingReporter,
    DiskFull,
    EngineError,
    Interrupted,
    ProgressMeter,
    Reporter,
    RunControl,
    bwlimit_option,
    host_environ,
)
from engines.fsutil import is_disk_full, remove_tree
from engines.manifest import Manifest, sha256_file
from engines.procs import stop_leftover
from engines.scan import Entry, scan
from engines.treestore import (
    TreeSnapshots,
    disk_full,
    manifest_path,
    set_meta,
)
from storage.atomic import fsync_dir

RSYNC_MISSING = "rsync is not installed; install it with apt-get install rsync"
CHECKPOINT_EVERY = 2.0  # seconds
# rsync's scratch space inside the partial snapshot: its temp files (--temp-dir) and the
# file lists. Kept inside `<id>.partial` so a cancel or discard removes it with the rest,
# and removed before the rename, so a complete snapshot holds only the sources.
WORK_DIR = ".bm-rsync-work"
# Marks the lines --out-format writes, one per item; names come last, so a name cannot
# forge a line (rsync escapes newlines in names as \#012).
ITEM_MARK = "[bm-item]"
STDERR_KEEP = 10_000  # lines of rsync's stderr kept; the last ones carry the real error
STOP_GRACE = 10.0  # seconds rsync gets to clean up after SIGTERM before SIGKILL

# From rsync(1), EXIT VALUES.
EXIT_MEANINGS = {
    1: "syntax or usage error",
    2: "protocol incompatibility",
    3: "errors selecting input/output files or directories",
    4: "requested action not supported",
    5: "error starting client-server protocol",
    6: "daemon unable to append to log file",
    10: "error in socket I/O",
    11: "error in file I/O",
    12: "error in rsync protocol data stream",
    13: "errors with program diagnostics",
    14: "error in IPC code",
    20: "received SIGUSR1 or SIGINT",
    21: "some error returned by waitpid()",
    22: "error allocating core memory buffers",
    23: "partial transfer due to error",
    24: "partial transfer due to vanished source files",
    25: "the --max-delete limit stopped deletions",
    30: "timeout in data send/receive",
    35: "timeout waiting for daemon connection",
}


# --- rsync's stdout: --info=progress2 lines and item lines --------------------------------

# `  1,234,567  45%   12.34MB/s    0:00:03 (xfr#12, ir-chk=1000/2345)`; the part in
# brackets only comes at the end of a file. Numbers have commas unless
# --no-human-readable is given; accept both.
_PROGRESS2_RE = re.compile(
    r"^\s*(?P<bytes>\d[\d,]*)\s+(?P<percent>\d+)%\s+(?P<rate>\S+/s)\s+(?P<time>[\d:]+)"
    r"(?:\s+\(xfr#(?P<xfr>\d+),\s*(?P<check>ir|to)-chk=(?P<left>\d+)/(?P<total>\d+)\))?\s*$")


@dataclass(frozen=True)
class Progress2Line:
    """One `--info=progress2` line: bytes transferred so far and, at a file's end, counts."""

    bytes: int
    percent: int
    transfers: int | None = None
    check: str | None = None  # "ir": rsync is still listing (incremental); "to": list done
    left: int | None = None
    total: int | None = None

    @property
    def totals_final(self) -> bool:
        """Whether rsync has listed everything (to-chk), so its entry total is final."""
        return self.check == "to"


def parse_progress2(line: str) -> Progress2Line | None:
    """Parse a progress2 line; None for anything else."""
    m = _PROGRESS2_RE.match(line)
    if m is None:
        return None
    xfr, left, total = m["xfr"], m["left"], m["total"]
    return Progress2Line(int(m["bytes"].replace(",", "")), int(m["percent"]),
                         int(xfr) if xfr else None, m["check"],
                         int(left) if left else None, int(total) if total else None)


@dataclass(frozen=True)
class ItemLine:
    """One `--out-format` line: an item rsync finished (or found unchanged)."""

    length: int  # the file's size (%l)
    sent: int  # bytes rsync moved for it (%b); 0 for links and unchanged files
    itemize: str  # %i, e.g. ">f+++++++++" (transferred), "hf" (hard-linked), ".f" (kept)
    name: str

    @property
    def is_file(self) -> bool:
        """Whether the item is a regular file."""
        return self.itemize[1:2] == "f"

    @property
    def transferred(self) -> bool:
        """Whether rsync copied data for it (as opposed to linking or keeping it)."""
        return self.itemize[:1] in ("<", ">")


_ESCAPE_RE = re.compile(r"\\#([0-7]{3})")


def _unescape(name: str) -> str:
    """Undo rsync's `\\#ooo` escapes of control characters in names (with -8, other
    bytes come through as they are)."""
    return _ESCAPE_RE.sub(lambda m: chr(int(m[1], 8)), name)


def parse_item(line: str) -> ItemLine | None:
    """Parse a line written by our --out-format; None for anything else."""
    if not line.startswith(ITEM_MARK):
        return None
    parts = line[len(ITEM_MARK):].split(":", 3)
    if len(parts) != 4 or not parts[0].isdigit() or not parts[1].isdigit():
        return None
    return ItemLine(int(parts[0]), int(parts[1]), parts[2], _unescape(parts[3]))


class TransferTally:
    """Folds rsync's stdout into running counts: files and bytes settled so far.

    rsync rewrites its progress line with a carriage return, so the stream is split on
    both \\r and \\n. Bytes settled = bytes of files that needed no data (hard-linked to
    the previous snapshot, or already complete from an interrupted run) plus rsync's own
    transfer counter, which also covers the file in flight. progress2 alone would stall at
    a few percent on an incremental run, where most files are linked, not sent.
    """

    def __init__(self) -> None:
        self._tail = ""
        self.files_done = 0
        self.kept_bytes = 0
        self.sent_files_bytes = 0
        self.progress_bytes = 0
        # rsync's own view of its file list (entries of every kind, not just files).
        self.counting = True
        self.entries_total: int | None = None
        self.entries_checked = 0
        self.current_file = ""

    @property
    def bytes_done(self) -> int:
        """Bytes of the source that are in the snapshot now."""
        return self.kept_bytes + max(self.sent_files_bytes, self.progress_bytes)

    def feed(self, text: str) -> None:
        """Take the next piece of output (any split: lines may arrive in pieces)."""
        lines = re.split(r"[\r\n]", self._tail + text)
        self._tail = lines.pop()
        for line in lines:
            self._line(line)

    def finish(self) -> None:
        """Take what is left once the output has ended."""
        if self._tail:
            self._line(self._tail)
            self._tail = ""

    def _line(self, line: str) -> None:
        item = parse_item(line)
        if item is not None:
            if item.is_file:
                self.files_done += 1
                if item.transferred:
                    self.sent_files_bytes += item.length
                else:
                    self.kept_bytes += item.length
                # rsync logs a sent file just before renaming it into place, so this can
                # lead by one file for a moment; it never runs further ahead. rsync does
                # not name the file in flight with progress2: show the last one finished.
                self.current_file = item.name
            return
        progress = parse_progress2(line)
        if progress is None:
            return
        self.progress_bytes = max(self.progress_bytes, progress.bytes)
        if progress.check is not None and progress.left is not None \
                and progress.total is not None:
            # While rsync lists incrementally (ir-chk) its total still grows: not final.
            self.counting = not progress.totals_final
            self.entries_total = progress.total
            self.entries_checked = progress.total - progress.left


# --- rsync's stderr and exit status ---------------------------------------------------------

_QUOTED_RE = re.compile(r'"(?P<path>.*)"')
_VANISHED_RE = re.compile(r'file has vanished: "(?P<path>.*)"')
_SUMMARY_RE = re.compile(r"^rsync (error|warning): .*\(code \d+\)")
_DISK_FULL_TEXT = ("No space left on device", "Disk quota exceeded")


@dataclass
class RsyncProblems:
    """What rsync complained about, sorted into per-file warnings and real errors."""

    warnings: list[str]
    errors: list[str]
    disk_full: str | None = None  # the error text when the destination filled up


def classify_stderr(lines: Sequence[str]) -> RsyncProblems:
    """Sort rsync's stderr: source files that vanished or could not be read are warnings
    (the run goes on without them, as the mirror engine does); anything else is an error."""
    problems = RsyncProblems([], [])
    for raw in lines:
        line = raw.strip()
        if not line or _SUMMARY_RE.match(line):
            continue
        full = next((t for t in _DISK_FULL_TEXT if t in line), None)
        if full is not None:
            problems.disk_full = problems.disk_full or full
            problems.errors.append(line)
            continue
        vanished = _VANISHED_RE.search(line)
        quoted = _QUOTED_RE.search(line)
        # Only the sender reads the source; a receiver or generator error is about the
        # destination and must fail the run.
        from_sender = quoted if "[sender]" in line else None
        if vanished is not None:
            problems.warnings.append(f"{vanished['path']} vanished during the backup; skipped")
        elif from_sender and line.endswith("No such file or directory (2)"):
            problems.warnings.append(f"{from_sender['path']} vanished during the backup; "
                                     "skipped")
        elif from_sender and line.endswith("Permission denied (13)"):
            problems.warnings.append(f"{from_sender['path']} cannot be read (Permission "
                                     "denied); "
                                     "skipped")
        else:
            problems.errors.append(line)
    return problems


def check_outcome(returncode: int, stderr: Sequence[str], dest: Path) -> list[str]:
    """Turn rsync's exit status and stderr into warnings, or raise a clear error."""
    problems = classify_stderr(stderr)
    if returncode == 0:
        return problems.warnings
    if problems.disk_full is not None:
        code = errno.EDQUOT if "quota" in problems.disk_full else errno.ENOSPC
        raise disk_full(dest, OSError(code, problems.disk_full))
    # 23 with nothing but unreadable or vanished source files, and 24 (files vanished while
    # rsync ran): the snapshot holds everything else, and the warnings say what is missing.
    if returncode in (23, 24) and not problems.errors:
        return problems.warnings
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = str(-returncode)
        reason = f"rsync was killed by signal {name}"
    else:
        meaning = EXIT_MEANINGS.get(returncode, "unknown error")
        reason = f"rsync failed: {meaning} (exit code {returncode})"
    detail = problems.errors[-3:] or [s.strip() for s in stderr if s.strip()][-3:]
    raise EngineError(f"{reason}: {' / '.join(detail)}" if detail else reason)


# --- running rsync ----------------------------------------------------------------------------


def rsync_binary() -> str:
    """The rsync program on PATH, or BinaryMissing."""
    found = shutil.which("rsync")
    if found is None:
        raise BinaryMissing(RSYNC_MISSING)
    return found


def rsync_command(rsync: str, source: str, target: str, files_from: Path, temp_dir: Path,
                  link_dest: Path | None, bwlimit: int | None) -> list[str]:
    """The rsync command line for one source directory (both paths end with a slash)."""
    argv = [
        rsync,
        # -a: recursion off (--files-from turns off the -r in -a), links as links,
        # permissions, times, group, owner. No -H: the manifest and restore have no notion
        # of hard links inside a source (as with mirror), and -H costs memory per file.
        "--archive", "--numeric-ids", "--no-devices", "--no-specials",
        # Exactly the scanned paths, NUL-separated so any name survives.
        f"--files-from={files_from}", "--from0",
        # Temp files outside the snapshot tree: a killed rsync leaves no `.name.XXXXXX` in
        # it. No --partial/--partial-dir: a local copy is --whole-file, so a partial file
        # would not be used as a basis anyway; an interrupted file is copied again whole.
        f"--temp-dir={temp_dir}",
        "--info=progress2", "--no-human-readable", "--outbuf=N", "-8",
        # -ii: a line for every item, unchanged ones too, so linked bytes count as done.
        # %b makes rsync log a transferred file once it is finished, not when it starts.
        "--itemize-changes", "--itemize-changes", f"--out-format={ITEM_MARK}%l:%b:%i:%n",
    ]
    if link_dest is not None:
        argv.append(f"--link-dest={link_dest}")
    if bwlimit:
        argv.append(f"--bwlimit={bwlimit}")
    # Both paths are absolute, so rsync never reads `host:path` into them, and `--` ends
    # the options even for a name that starts with a dash.
    return [*argv, "--", source, target]


def _rsync_env() -> dict[str, str]:
    # English messages, since stderr is classified by its text; and no RSYNC_* variables
    # from the caller's environment changing what rsync does.
    env = {k: v for k, v in host_environ().items() if not k.startswith("RSYNC_")}
    env["LC_ALL"] = "C"
    return env


class _Checkpointer:
    """Emits the run's checkpoint now, or when a couple of seconds have passed."""

    def __init__(self, reporter: Reporter, state: Mapping[str, Any],
                 meter: ProgressMeter) -> None:
        self.reporter = reporter
        self.state = dict(state)
        self.meter = meter
        self._last = time.monotonic()
        self._lock = threading.Lock()

    def emit(self) -> None:
        """Emit a checkpoint with the counts so far."""
        with self._lock:
            self.reporter.checkpoint({**self.state, "files_done": self.meter.state.files_done,
                                      "bytes_done": self.meter.state.bytes_done})
            self._last = time.monotonic()

    def maybe(self) -> None:
        """Emit a checkpoint if the last one is old enough."""
        if time.monotonic() - self._last >= CHECKPOINT_EVERY:
            self.emit()


class _Watcher(threading.Thread):
    """Applies pause, resume, cancel and interrupt to a running rsync's process group,
    and emits checkpoints while it runs."""

    def __init__(self, proc: subprocess.Popen[bytes], control: RunControl,
                 meter: ProgressMeter, checkpointer: _Checkpointer) -> None:
        super().__init__(name="rsync-watcher", daemon=True)
        self.proc = proc
        self.control = control
        self.meter = meter
        self.checkpointer = checkpointer
        self.done = threading.Event()
        self.reason: str | None = None  # "cancel" or "interrupt" once rsync was stopped
        self.stopped = False

    def run(self) -> None:
        """Watch the control until rsync's output ends."""
        # The group cannot be reused while we watch: the reading loop reaps rsync only
        # after this thread has ended.
        while not self.done.is_set():
            if self.control.cancelled or self.control.interrupted:
                self.reason = "cancel" if self.control.cancelled else "interrupt"
                _signal_group(self.proc, signal.SIGTERM)
                _signal_group(self.proc, signal.SIGCONT)  # a stopped rsync must see it
                self.stopped = False
                return
            if self.control.paused and not self.stopped:
                _signal_group(self.proc, signal.SIGSTOP)
                self.stopped = True
                # Show where it holds (the last update may have been throttled away).
                self.meter.update(force=True)
            elif not self.control.paused and self.stopped:
                _signal_group(self.proc, signal.SIGCONT)
                self.stopped = False
            if not self.stopped:
                self.checkpointer.maybe()
            self.control.wait_for_change(0.1)
        if self.stopped:
            _signal_group(self.proc, signal.SIGCONT)


def _signal_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


def _stop_group(proc: subprocess.Popen[bytes]) -> None:
    """Stop rsync and its helpers (cleanly if they will), and reap it."""
    if proc.poll() is None:
        _signal_group(proc, signal.SIGTERM)
        _signal_group(proc, signal.SIGCONT)
        try:
            proc.wait(STOP_GRACE)
        except subprocess.TimeoutExpired:
            _signal_group(proc, signal.SIGKILL)
            proc.wait()


def _collect_lines(stream: IO[bytes], keep: deque[str], dropped: list[int]) -> None:
    for raw in stream:
        if len(keep) == keep.maxlen:
            dropped[0] += 1
        keep.append(raw.decode("utf-8", "replace").rstrip("\n"))


@dataclass(frozen=True)
class RsyncRun:
    """How one rsync run ended."""

    returncode: int
    stderr: list[str]
    stderr_dropped: int  # lines beyond STDERR_KEEP, not kept
    tally: TransferTally


def run_rsync(argv: list[str], control: RunControl, meter: ProgressMeter,
              on_tally: Callable[[TransferTally], None],
              checkpointer: _Checkpointer) -> RsyncRun:
    """Run rsync, feeding its output to `on_tally` as it comes, and return how it ended.

    Raises Cancelled or Interrupted if the control asked for that (rsync stopped first).
    rsync gets its own session so that pause and stop reach its helper processes too.
    If this process dies, rsync's next write to the closed pipe ends it.
    """
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True, env=_rsync_env())
    assert proc.stdout is not None and proc.stderr is not None
    # The pid in the checkpoint lets a resume or a discard stop this rsync if the worker
    # dies without it (engines.procs).
    checkpointer.state["pid"] = proc.pid
    checkpointer.emit()
    stderr: deque[str] = deque(maxlen=STDERR_KEEP)
    dropped = [0]
    reader = threading.Thread(target=_collect_lines, args=(proc.stderr, stderr, dropped),
                              name="rsync-stderr", daemon=True)
    reader.start()
    watcher = _Watcher(proc, control, meter, checkpointer)
    watcher.start()
    tally = TransferTally()
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    ended = False
    try:
        fd = proc.stdout.fileno()
        while chunk := os.read(fd, 1 << 16):
            tally.feed(decoder.decode(chunk))
            on_tally(tally)
        tally.feed(decoder.decode(b"", final=True))
        tally.finish()
        on_tally(tally)
        ended = True
    finally:
        watcher.done.set()
        watcher.join()
        if ended:
            # rsync closed its output and is exiting by itself: a signal now could turn
            # a finished run into "received SIGINT" (exit 20).
            try:
                proc.wait(STOP_GRACE)
            except subprocess.TimeoutExpired:
                _stop_group(proc)
        else:
            _stop_group(proc)  # an error here: do not leave rsync running
        reader.join()
        proc.stdout.close()
        proc.stderr.close()
    if watcher.reason == "cancel":
        raise Cancelled("the run was cancelled")
    if watcher.reason == "interrupt":
        raise Interrupted("the run was interrupted; it can resume from its checkpoint")
    return RsyncRun(proc.returncode, list(stderr), dropped[0], tally)


# --- the engine ---------------------------------------------------------------------------


def _walk_tree(root: Path, rel: str) -> Iterator[tuple[str, Path, os.stat_result]]:
    """Every entry at and under root, parents first, names sorted (the scan's order)."""
    st = root.lstat()
    yield rel, root, st
    if not stat.S_ISDIR(st.st_mode):
        return
    with os.scandir(root) as it:
        children = sorted(it, key=lambda e: e.name)
    for child in children:
        yield from _walk_tree(Path(child.path), f"{rel}/{child.name}")


def _record(rel: str, path: Path, st: os.stat_result) -> dict[str, Any] | None:
    """A manifest entry for what is on disk (without the hash of a file)."""
    mode = stat.S_IMODE(st.st_mode)
    if stat.S_ISDIR(st.st_mode):
        return {"path": rel, "type": "dir", "mode": mode, "mtime_ns": st.st_mtime_ns}
    if stat.S_ISLNK(st.st_mode):
        return {"path": rel, "type": "symlink", "target": os.readlink(path), "mode": mode,
                "mtime_ns": st.st_mtime_ns}
    if stat.S_ISREG(st.st_mode):
        return {"path": rel, "type": "file", "size": st.st_size, "mtime_ns": st.st_mtime_ns,
                "mode": mode}
    return None


class RsyncEngine(TreeSnapshots):
    """Snapshots as directories made by rsync, hard-linked to the previous snapshot."""

    name = "rsync"
    resumes_partial = True

    def discard_partial(self, spec: BackupSpec, resume: Mapping[str, Any] | None = None) -> None:
        """Stop an rsync the interrupted run left behind, then remove partial snapshots."""
        stop_leftover(resume, "rsync", str(spec.destination / str((resume or {}).get(
            "partial", ""))))
        super().discard_partial(spec, resume)

    def check_ready(self, spec: BackupSpec) -> None:
        """Raise BinaryMissing unless rsync is installed."""
        rsync_binary()

    def backup(self, spec: BackupSpec, control: RunControl, reporter: Reporter,
               resume: Mapping[str, Any] | None = None) -> BackupResult:
        """Make a new snapshot with rsync, or finish the one a checkpoint names."""
        started = time.monotonic()
        rsync = rsync_binary()
        spec.check_sources()
        spec.check_destination()
        bwlimit = bwlimit_option(spec.options)
        dest = spec.destination
        self.tidy(spec)
        stop_leftover(resume, "rsync", str(dest / str((resume or {}).get("partial", ""))))
        snap_id, partial, resuming = self.partial_for(spec, resume)
        checkpoint = {"engine": self.name, "snapshot_id": snap_id, "partial": partial.name}
        warn = CollectingReporter(reporter)
        meter = ProgressMeter(warn)
        checkpointer = _Checkpointer(warn, checkpoint, meter)
        checkpointer.emit()
        work = partial / WORK_DIR
        try:
            if work.exists():
                remove_tree(work)  # temp files of an rsync that was killed
            (work / "tmp").mkdir(parents=True)
            # Scan first: the same selection as mirror, exact totals before copying (so
            # progress never has to guess), and the list rsync copies. rsync's own totals
            # cover entries of every kind and grow while it lists; ours are final.
            meter.update(force=True, phase="scanning", counting=True)
            entries = scan(spec, control, warn)
            files = [e for e in entries if e.kind == "file"]
            meter.update(force=True, phase="copying", counting=False, files_total=len(files),
                         bytes_total=sum(e.size for e in files))
            if resuming:
                _prune_stale(partial, entries)
            previous = self.latest(spec)
            prev_root = dest / previous[0] if previous else None
            self._copy_sources(rsync, spec, entries, partial, work, prev_root, bwlimit,
                               control, meter, warn, checkpointer)
            records = self._manifest_entries(spec, partial, prev_root,
                                             previous[1].by_path() if previous else {},
                                             control, warn, checkpointer)
            remove_tree(work)
            checkpointer.meter.update(force=True, phase="finalising", current_file="")
            # Data first, then the manifest, then the rename that makes it complete.
            os.sync()
            created = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
            manifest = Manifest(snap_id, self.name, created,
                                {n: str(p) for n, p in spec.source_names().items()}, records)
            manifest.write(manifest_path(dest, snap_id))
            os.replace(partial, dest / snap_id)
            fsync_dir(dest)
        except Cancelled:
            _discard(partial)
            raise
        except Interrupted:
            # Keep the partial snapshot: a resume continues it.
            checkpointer.emit()
            raise
        except DiskFull:
            _discard(partial)  # free the space so the next run can succeed
            raise
        except OSError as err:
            if is_disk_full(err):
                _discard(partial)
                raise disk_full(dest, err) from err
            raise EngineError(f"backup to {dest} failed: {err.strerror} "
                              f"({err.filename})") from err
        checkpointer.meter.update(force=True, phase="done", counting=False, current_file="",
                                  files_done=manifest.files, files_total=manifest.files,
                                  bytes_done=manifest.size, bytes_total=manifest.size)
        return BackupResult(snap_id, manifest.files, manifest.size,
                            time.monotonic() - started, tuple(warn.warnings))

    def _copy_sources(self, rsync: str, spec: BackupSpec, entries: list[Entry],
                      partial: Path, work: Path, prev_root: Path | None,
                      bwlimit: int | None, control: RunControl, meter: ProgressMeter,
                      warn: Reporter, checkpointer: _Checkpointer) -> None:
        """Run rsync once per source, counting progress across all of them."""
        groups: dict[str, list[Entry]] = {}
        for entry in entries:
            groups.setdefault(entry.rel.split("/", 1)[0], []).append(entry)
        base_files, base_bytes = 0, 0
        bytes_total = meter.state.bytes_total or 0
        for index, (name, src) in enumerate(spec.source_names().items()):
            group = groups.get(name)
            if not group:
                continue  # a special file, skipped by the scan with a warning
            control.safe_point()
            top = group[0]
            if top.kind == "dir":
                # The contents of the source directory go into <partial>/<name>/; the
                # directory itself is not listed (rsync would also send "." contents).
                target = partial / name
                target.mkdir(exist_ok=True)
                paths = [e.rel[len(name) + 1:] for e in group[1:]]
                source_arg, target_arg = os.path.join(src, ""), os.path.join(target, "")
                link = prev_root / name if prev_root and (prev_root / name).is_dir() else None
                prefix = f"{name}/"
            else:
                # A single file or symlink: copy it by name from its parent directory.
                target = partial
                paths = [src.name]
                source_arg, target_arg = os.path.join(src.parent, ""), os.path.join(partial, "")
                link = prev_root if prev_root and os.path.lexists(prev_root / name) else None
                prefix = ""
            if paths:
                files_from = work / f"files-{index}"
                files_from.write_bytes(b"".join(os.fsencode(p) + b"\0" for p in paths))
                argv = rsync_command(rsync, source_arg, target_arg, files_from, work / "tmp",
                                     link, bwlimit)

                def on_tally(tally: TransferTally, files: int = base_files,
                             done: int = base_bytes, prefix: str = prefix) -> None:
                    meter.update(files_done=files + tally.files_done,
                                 bytes_done=min(bytes_total, done + tally.bytes_done),
                                 current_file=prefix + tally.current_file
                                 if tally.current_file else "")

                run = run_rsync(argv, control, meter, on_tally, checkpointer)
                for message in check_outcome(run.returncode, run.stderr, spec.destination):
                    warn.warning(message)
                if run.stderr_dropped:
                    warn.warning(f"rsync printed {run.stderr_dropped} more messages than "
                                 "are kept")
                base_files += run.tally.files_done
                base_bytes += run.tally.bytes_done
            if top.kind == "dir":
                set_meta(target, {"type": "dir", "mode": top.mode, "mtime_ns": top.mtime_ns})
        meter.update(force=True, current_file="")

    def _manifest_entries(self, spec: BackupSpec, partial: Path, prev_root: Path | None,
                          prev_entries: dict[str, dict[str, Any]], control: RunControl,
                          warn: Reporter, checkpointer: _Checkpointer) -> list[dict[str, Any]]:
        """Describe what rsync wrote; hash files, except those linked to the previous snapshot."""
        meter = ProgressMeter(warn)
        checkpointer.meter = meter
        meter.update(force=True, phase="hashing", counting=True)
        records: list[dict[str, Any]] = []
        to_hash: list[tuple[dict[str, Any], Path]] = []
        for name in spec.source_names():
            if not os.path.lexists(partial / name):
                continue
            for rel, path, st in _walk_tree(partial / name, name):
                record = _record(rel, path, st)
                if record is None:
                    warn.warning(f"{rel} is a special file; left out of the manifest")
                    continue
                records.append(record)
                if record["type"] == "file":
                    digest = _linked_hash(st, prev_root, rel, prev_entries.get(rel))
                    if digest is None:
                        to_hash.append((record, path))
                    else:
                        record["sha256"] = digest
        meter.update(force=True, counting=False, files_total=len(to_hash),
                     bytes_total=sum(r["size"] for r, _ in to_hash))

        def on_chunk(n: int) -> None:
            meter.add(nbytes=n)
            control.safe_point()  # pause or cancel inside a large file too

        for record, path in to_hash:
            control.safe_point()
            checkpointer.maybe()
            meter.update(current_file=record["path"])
            record["sha256"] = _hash_readable(path, record["mode"], on_chunk)
            meter.add(files=1)
        return records


def _linked_hash(st: os.stat_result, prev_root: Path | None, rel: str,
                 prev: Mapping[str, Any] | None) -> str | None:
    """The previous manifest's hash if this file is the previous snapshot's file (a hard
    link made by --link-dest: same inode, so same content)."""
    if prev_root is None or prev is None or prev.get("type") != "file" \
            or prev.get("size") != st.st_size or not isinstance(prev.get("sha256"), str):
        return None
    try:
        old = (prev_root / rel).lstat()
    except OSError:
        return None
    if (old.st_dev, old.st_ino) != (st.st_dev, st.st_ino):
        return None
    return str(prev["sha256"])


def _hash_readable(path: Path, mode: int, on_chunk: Callable[[int], None]) -> str:
    """Hash a file rsync wrote, even one whose mode gives its owner no read permission."""
    try:
        return sha256_file(path, on_chunk)
    except PermissionError:
        if os.geteuid() == 0 or mode & stat.S_IRUSR:
            raise
    # Not a hard link to an older snapshot (those are never hashed), so this changes no
    # other snapshot's file.
    os.chmod(path, mode | stat.S_IRUSR)
    try:
        return sha256_file(path, on_chunk)
    finally:
        os.chmod(path, mode)


def _prune_stale(partial: Path, entries: Sequence[Entry]) -> None:
    """Remove what an interrupted run copied that the sources no longer hold (or that
    changed kind), so the resumed snapshot matches today's sources."""
    wanted = {e.rel: e.kind for e in entries}

    def prune(path: Path, rel: str) -> None:
        st = path.lstat()
        kind = _KINDS.get(stat.S_IFMT(st.st_mode))
        if wanted.get(rel) != kind:
            if kind == "dir":
                remove_tree(path)
            else:
                path.unlink()
        elif kind == "dir":
            with os.scandir(path) as it:
                children = [(Path(c.path), f"{rel}/{c.name}") for c in it]
            for child, child_rel in children:
                prune(child, child_rel)

    for top in list(partial.iterdir()):
        if top.name != WORK_DIR:
            prune(top, top.name)


_KINDS = {stat.S_IFDIR: "dir", stat.S_IFLNK: "symlink", stat.S_IFREG: "file"}


def _discard(partial: Path) -> None:
    """Remove one run's partial snapshot."""
    if partial.is_dir():
        remove_tree(partial)
