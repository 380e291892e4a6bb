"""Reading restic: its JSON output (backup progress and summary, `ls`, `snapshots`),
`check` progress, and what its stderr says went wrong.

Pure parsers, tested on recorded output of the real restic (tests/test_restic_output.py):
nothing here runs restic. BackupOutput and Listing are fed line by line as restic prints.
"""

from __future__ import annotations

import json
import logging
import posixpath
import re
import signal
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from engines.errors import DestinationNotWritable, DiskFull, EngineError
from engines.progress import ProgressMeter, Reporter
from engines.restic.cli import ResticRepo
from engines.restic.process import Finished

log = logging.getLogger(__name__)

SHORT_ID_LEN = 8
CHECKPOINT_EVERY = 60.0  # checkpoints are stored events: often enough, not chatty
MAX_OTHER_LINES = 20  # non-JSON lines passed on as warnings before they are only logged

ID_RE = re.compile(r"^[0-9a-f]{8,64}$")
_CHECK_PROGRESS_RE = re.compile(r"^\[[\d:]+\]\s+([\d.]+)%\s+\d+\s*/\s*\d+\s+packs")
_FRACTION_RE = re.compile(r"(\.\d{6})\d+")


def parse_time(text: Any) -> datetime:
    """A restic time (RFC 3339 with nanoseconds and any offset) as a UTC datetime."""
    if not isinstance(text, str):
        raise ValueError(f"not a time: {text!r}")
    when = datetime.fromisoformat(_FRACTION_RE.sub(r"\1", text.strip()))
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.astimezone(UTC)


def as_count(value: Any) -> int:
    """A non-negative whole number from restic's JSON, 0 when missing or odd."""
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        return 0
    return int(value)


def json_object(raw: bytes) -> dict[str, Any] | None:
    """One line of JSON as an object; None for anything else."""
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def check_progress(raw: bytes) -> float | None:
    """The share (0..1) of packs read, from a progress line of `restic check`."""
    found = _CHECK_PROGRESS_RE.match(raw.decode("utf-8", "replace").strip())
    return min(1.0, float(found.group(1)) / 100) if found else None


# --- paths: what restic stores vs. the names the app shows --------------------------------


def snapshot_roots(snap: Mapping[str, Any]) -> dict[str, str]:
    """A snapshot's source names -> the absolute paths restic stored them under."""
    roots: dict[str, str] = {}
    for path in snap.get("paths") or ():
        if isinstance(path, str) and path.startswith("/"):
            roots.setdefault(posixpath.basename(path.rstrip("/")) or "root", path)
    return roots


def rel_in(path: str, roots: Mapping[str, str]) -> str | None:
    """`<name>/<path inside the source>` for an absolute path, None outside every source."""
    for name, root in roots.items():
        if path == root:
            return name
        prefix = root if root.endswith("/") else root + "/"
        if path.startswith(prefix):
            return f"{name}/{path[len(prefix):]}"
    return None


# --- errors: what restic's stderr says went wrong -----------------------------------------


def known_failure(repo: ResticRepo, what: str, fin: Finished, full_place: Path | None = None
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


def restic_error(repo: ResticRepo, what: str, fin: Finished, full_place: Path | None = None
                 ) -> EngineError:
    """The clearest error for a restic call that failed."""
    known = known_failure(repo, what, fin, full_place)
    if known is not None:
        return known
    lines = [line.removeprefix("Fatal: ") for line in fin.stderr
             if not line.startswith(("using temporary cache", "create exclusive lock"))]
    reason = lines[-1] if lines else "no message"
    return EngineError(f"restic {what} failed (exit code {fin.code}): {reason}")


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
        return rel_in(path, self.roots) or path

    def feed(self, raw: bytes) -> None:
        """Handle one line of restic's stdout; bad or unknown lines never raise."""
        if raw.startswith(b'{"message_type":"verbose_status"') and b"scan_finished" not in raw:
            return  # one line per file: the status lines already carry what progress needs
        msg = json_object(raw)
        if msg is None:
            self._other(raw)
            return
        kind = msg.get("message_type")
        if msg.get("action") == "scan_finished":
            # restic 0.14 labels this one "status"; later versions "verbose_status". It
            # carries the final totals.
            self.scan_finished = True
            totals = {"files_total": msg["total_files"]} if as_count(msg.get("total_files")) \
                else {}
            if as_count(msg.get("data_size")):
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
        msg = json_object(raw) if raw.startswith(b"{") else None
        if msg is None or msg.get("message_type") != "error":
            return False
        self._error(msg)
        return True

    def _status(self, msg: Mapping[str, Any]) -> None:
        if "seconds_remaining" in msg:
            self.scan_finished = True
        files_total = as_count(msg.get("total_files"))
        bytes_total = as_count(msg.get("total_bytes"))
        files_done, bytes_done = as_count(msg.get("files_done")), as_count(msg.get("bytes_done"))
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


# --- reading `restic ls` ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Node:
    """One entry of a snapshot: its path as the app shows it, its type and size."""

    rel: str
    kind: str
    size: int


class Listing:
    """Reads `restic ls --json <id>`: the snapshot (its first line), then every node,
    counting regular files and their bytes, and keeping the nodes when asked to."""

    def __init__(self, keep_nodes: bool) -> None:
        self.keep_nodes = keep_nodes
        self.snapshot: dict[str, Any] | None = None
        self.roots: dict[str, str] = {}
        self.nodes: list[Node] = []
        self.files = 0
        self.size = 0

    def feed(self, raw: bytes) -> None:
        """Take one line of the listing."""
        msg = json_object(raw)
        if msg is None:
            return
        if msg.get("struct_type") == "snapshot" and self.snapshot is None:
            self.snapshot = msg
            self.roots = snapshot_roots(msg)
            return
        path, kind, size = msg.get("path"), str(msg.get("type", "")), as_count(msg.get("size"))
        if not isinstance(path, str):
            return
        if kind == "file":
            self.files += 1
            self.size += size
        if self.keep_nodes:
            rel = rel_in(path, self.roots)
            if rel is not None:
                self.nodes.append(Node(rel, kind, size))
