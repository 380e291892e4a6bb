"""The YAML projections (jobs/<id>.yaml, settings.yaml) and the position they reflect."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import yaml

from models.atomic import remove_durable, write_atomic, write_many_atomic
from models.ids import SETTINGS_STREAM, is_job_id
from storage.fold import Doc, FoldEvent, fold_job, fold_settings, initial_settings
from storage.yamltext import render_mapping

log = logging.getLogger(__name__)

STATE_FILE = ".projection.json"
SETTINGS_FILE = "settings.yaml"
JOBS_DIR = "jobs"

HEADER = (
    "# Written by backup-manager from its event log (events.db); edits here are replaced.\n"
    "# Change jobs and settings in the app or through its API.\n"
)
_JOB_KEYS = ("id", "name", "enabled", "spec", "created", "updated", "runs", "last_success",
             "last_restore", "snapshots", "totals", "version", "last_seq")
_SETTINGS_KEYS = ("settings", "updated", "version", "last_seq")
# Files written at once by a flush of many files, and the most files in one batch.
WRITE_THREADS = 8
WRITE_BATCH = 64
# libyaml's parser when PyYAML was built with it (the same safe constructor; 1,000 job
# files parse in a fraction of the pure-Python loader's time at start-up).
_SAFE_LOADER: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def render_yaml(doc: Doc, key_order: Iterable[str]) -> bytes:
    """Render a document as YAML: known keys in a fixed order, nested keys sorted."""
    ordered = {k: doc[k] for k in key_order if k in doc}
    for key in sorted(doc):
        if key not in ordered:
            ordered[key] = doc[key]
    return (HEADER + render_mapping(ordered)).encode("utf-8")


def write_files(writes: Iterable[tuple[Path, bytes]], count: int) -> None:
    """Write `count` files atomically and durably, many at once: each fsync waits on the
    disk, and several in flight share its journal commits (a rebuild writes a file per
    job). `writes` may render each file as it is asked for: the first files are then
    being written while the next are rendered."""
    if count < 2 * WRITE_THREADS:
        write_many_atomic(list(writes))
        return
    # Batches of a few dozen files: each costs one fsync of its directory, and the
    # writers start on the first batch while the rest are still being rendered.
    size = max(1, min(WRITE_BATCH, count // (2 * WRITE_THREADS)))
    with ThreadPoolExecutor(WRITE_THREADS, thread_name_prefix="projection-write") as pool:
        # Each batch is written whole (every file fsynced, renamed, its directory
        # fsynced) before this returns, so the position written next never runs ahead of
        # a file. Leaving the `with` waits for every batch, even when rendering failed.
        started: list[Future[None]] = []
        batch: list[tuple[Path, bytes]] = []
        for write in writes:
            batch.append(write)
            if len(batch) >= size:
                started.append(pool.submit(write_many_atomic, batch))
                batch = []
        if batch:
            started.append(pool.submit(write_many_atomic, batch))
        for done in started:
            done.result()


def job_path(root: Path, job_id: str) -> Path:
    """Where a job's YAML projection lives."""
    return root / JOBS_DIR / f"{job_id}.yaml"


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Projection:
    """Job and settings documents folded from the log, and their files under `root`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.jobs: dict[str, Doc] = {}
        self.settings: Doc = initial_settings()
        self.seq = 0
        # What the files on disk show (seq trails it between an apply and its flush).
        self.flushed_seq = 0
        self._dirty: set[str] = {SETTINGS_STREAM}
        self._written: dict[str, str] = {}  # relative path -> sha256 of what we wrote
        self._job_ids: set[str] = set()  # streams already found to be job ids

    # --- folding ------------------------------------------------------------------

    def _stream_version(self, stream: str) -> int:
        if stream == SETTINGS_STREAM:
            return int(self.settings["version"])
        doc = self.jobs.get(stream)
        return int(doc["version"]) if doc else 0

    def apply_to_stream(self, ev: FoldEvent) -> None:
        """Fold one event into its stream's document unless that document already has it."""
        if ev.stream == SETTINGS_STREAM:
            if ev.version > self.settings["version"]:
                self.settings = fold_settings(self.settings, ev)
                self._dirty.add(SETTINGS_STREAM)
            return
        if ev.stream not in self._job_ids:
            if not is_job_id(ev.stream):
                self._warn_not_a_job(ev)
                return
            self._job_ids.add(ev.stream)  # checked once per stream, not once per event
        doc = self.jobs.get(ev.stream)
        if doc is not None and ev.version <= doc["version"]:
            return
        new = fold_job(doc, ev)
        if new is None:
            self.jobs.pop(ev.stream, None)
        else:
            self.jobs[ev.stream] = new
        if new is not None or doc is not None:
            self._dirty.add(ev.stream)

    @staticmethod
    def _warn_not_a_job(ev: FoldEvent) -> None:
        """Say that an event of a stream that is not a job was skipped."""
        log.warning("event %d has stream %r, which is not a job id; skipped",
                    ev.seq, ev.stream)

    def apply(self, events: Iterable[FoldEvent]) -> None:
        """Fold events in seq order; events at or below the applied seq change nothing."""
        for ev in events:
            if ev.seq <= self.seq:
                continue
            self.apply_to_stream(ev)
            self.seq = ev.seq

    def reset_stream(self, stream: str) -> None:
        """Forget a stream's document so it can be rebuilt from its events."""
        if stream == SETTINGS_STREAM:
            self.settings = initial_settings()
        else:
            self.jobs.pop(stream, None)
        self._dirty.add(stream)

    # --- files --------------------------------------------------------------------

    def mark_all_dirty(self) -> None:
        """Rewrite every file on the next flush, and remove job files the log lacks."""
        self._dirty.add(SETTINGS_STREAM)
        jobs_dir = self.root / JOBS_DIR
        if jobs_dir.is_dir():
            self._dirty.update(p.stem for p in jobs_dir.glob("*.yaml"))

    def _relpath(self, stream: str) -> str:
        return SETTINGS_FILE if stream == SETTINGS_STREAM else f"{JOBS_DIR}/{stream}.yaml"

    def render(self, stream: str) -> bytes | None:
        """The bytes of a stream's YAML file, or None when the job does not exist."""
        if stream == SETTINGS_STREAM:
            return render_yaml(self.settings, _SETTINGS_KEYS)
        doc = self.jobs.get(stream)
        return render_yaml(doc, _JOB_KEYS) if doc is not None else None

    @property
    def dirty(self) -> bool:
        """Whether some document changed since the last flush."""
        return bool(self._dirty)

    def _rendered(self, streams: list[str]) -> Iterator[tuple[Path, bytes]]:
        """Render changed files one by one, removing those of jobs that no longer exist."""
        for stream in streams:
            rel = self._relpath(stream)
            data = self.render(stream)
            if data is None:
                remove_durable(self.root / rel)
                self._written.pop(rel, None)
            else:
                self._written[rel] = _sha(data)
                yield self.root / rel, data

    def flush(self) -> None:
        """Write changed files atomically, then the position they reflect (blocking I/O)."""
        streams = sorted(self._dirty)
        write_files(self._rendered(streams), len(streams))
        # The position is written after the files: after a crash in between, the files
        # are ahead of it, and applying those events again changes nothing (versions).
        seq = self.seq
        state = {"format": 1, "seq": seq, "files": dict(sorted(self._written.items()))}
        write_atomic(self.root / STATE_FILE, json.dumps(state, indent=1).encode())
        self._dirty.clear()
        self.flushed_seq = seq

    def repair(self) -> list[str]:
        """Rewrite files that were changed or removed since written; return their paths."""
        damaged: list[str] = []
        for stream in [SETTINGS_STREAM, *sorted(self.jobs)]:
            rel = self._relpath(stream)
            try:
                intact = _sha((self.root / rel).read_bytes()) == self._written.get(rel)
            except OSError:
                intact = False
            if not intact:
                log.warning("%s was changed or removed outside the app; rebuilding it "
                            "from the event log", self.root / rel)
                damaged.append(rel)
                self._dirty.add(stream)
        if damaged:
            self.flush()
        return damaged

    @classmethod
    def load(cls, root: Path, should_stop: Callable[[], bool] = lambda: False
             ) -> tuple[Projection, set[str]]:
        """Load documents from disk; return them with the streams whose files need a rebuild.

        A file that is missing, changed by hand or unreadable is not trusted: its stream
        is returned for a rebuild from the log. Without a readable position file the
        projection starts from seq 0 and every stream is rebuilt by the catch-up.
        `should_stop` is asked between files; once it says yes the load ends early and
        what it returns is incomplete (the caller, stopping, must not use it).
        """
        proj = cls(root)
        try:
            state = json.loads((root / STATE_FILE).read_bytes())
            seq, files = int(state["seq"]), dict(state["files"])
        except FileNotFoundError:
            return proj, set()
        except (ValueError, KeyError, TypeError, OSError) as err:
            log.warning("projection position %s unreadable (%s); rebuilding from the log",
                        root / STATE_FILE, err)
            return proj, set()
        proj.seq = proj.flushed_seq = seq
        broken: set[str] = set()
        for rel, digest in sorted(files.items()):
            if should_stop():
                break
            stream = SETTINGS_STREAM if rel == SETTINGS_FILE else Path(rel).stem
            try:
                data = (root / rel).read_bytes()
                if _sha(data) != digest:
                    raise ValueError("its content is not what the app wrote")
                doc = yaml.load(data, Loader=_SAFE_LOADER)  # a safe loader: plain data only
                if not isinstance(doc, dict):
                    raise ValueError("it is not a YAML mapping")
            except (OSError, ValueError, yaml.YAMLError) as err:
                log.warning("%s was changed or removed outside the app (%s); "
                            "rebuilding it from the event log", root / rel, err)
                broken.add(stream)
                continue
            if stream == SETTINGS_STREAM:
                proj.settings = doc
            else:
                proj.jobs[stream] = doc
            proj._written[rel] = digest
        proj._dirty.clear()
        proj._dirty.update(broken)
        return proj, broken
