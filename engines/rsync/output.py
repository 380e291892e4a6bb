"""Reading rsync: its --info=progress2 and --out-format lines, its stderr and exit status.

Split out of engines.rsync.engine: turning what rsync prints into progress counts, per-file
warnings (the run goes on) and clear errors (the run fails).
"""

from __future__ import annotations

import errno
import re
import signal
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from engines.errors import EngineError
from engines.treestore import disk_full

# Marks the lines --out-format writes, one per item; names come last, so a name cannot
# forge a line (rsync escapes newlines in names as \#012).
ITEM_MARK = "[bm-item]"

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
