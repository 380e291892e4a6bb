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
prunes, restores and verifies only its own (engines.restic.jobs). A backup is only a
success once restic lists the snapshot it reported; a local repository that vanishes
while restic writes to it stops the run within seconds (engines.restic.watch).

The package: cli (argv, environment, options), process (one restic call, supervised by
engines.child), output (parsers of what restic prints, and its errors), paths (what restic
is given), repo (repository calls: list, check, forget, tidy up), restore, jobs, watch;
this module holds the engine and its backup.
"""

from __future__ import annotations

import logging
import re
import secrets
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from engines.child import stop_orphans
from engines.contract import BackupSpec, Engine, Snapshot
from engines.control import RunControl
from engines.errors import Cancelled, DiskFull, EngineError, Interrupted
from engines.progress import CollectingReporter, ProgressMeter, Reporter
from engines.restic.cli import ResticRepo, has_repository, repo_for, restic_binary
from engines.restic.confirm import snapshot_file_intact
from engines.restic.jobs import backup_tags
from engines.restic.output import (
    ID_RE,
    SHORT_ID_LEN,
    BackupOutput,
    as_count,
    parse_time,
    restic_error,
)
from engines.restic.paths import exclude_args, excluded_paths, restic_roots
from engines.restic.process import Finished
from engines.restic.repo import (
    adopt_partial_upload,
    call,
    delete_snapshots,
    drop_partial_upload,
    ensure_repository,
    list_snapshots,
    remember_stats,
    remove_dead_locks,
    run_started,
    snapshot_stats,
    stop_orphan,
    verify_snapshot,
)
from engines.restic.restore import restore_snapshot
from engines.restic.watch import clear_remnant
from engines.results import BackupResult, RestoreResult, VerifyResult

log = logging.getLogger(__name__)

LIST_WORKERS = 4


def _run_tag(resume: Mapping[str, Any] | None) -> str:
    """The tag this run's snapshot gets: kept from its checkpoint, else a new one."""
    value = resume.get("tag") if resume else None
    if isinstance(value, str) and re.fullmatch(r"bm-[0-9a-f]{16}", value):
        return value
    return f"bm-{secrets.token_hex(8)}"


# --- the engine -------------------------------------------------------------------------


class ResticEngine(Engine):
    """Snapshots in a restic repository, made, listed, restored and checked by restic."""

    name = "restic"
    resumes_partial = True

    def check_ready(self, spec: BackupSpec) -> None:
        """Raise a clear error if restic is not installed or the password file is unusable."""
        restic_binary()
        repo_for(spec)

    # --- backup -------------------------------------------------------------------------

    def backup(self, spec: BackupSpec, control: RunControl, reporter: Reporter,
               resume: Mapping[str, Any] | None = None) -> BackupResult:
        """Make a restic snapshot of the sources; with a checkpoint, reuse what was uploaded."""
        started = time.monotonic()
        repo = repo_for(spec)
        spec.check_sources()
        spec.check_destination()
        stop_orphans("restic", str(repo.path))
        # The first attempt's start: what any attempt of this run uploaded is newer.
        since = run_started(resume) or time.time()
        warn = CollectingReporter(reporter)
        meter = ProgressMeter(warn)
        meter.update(force=True, phase="scanning", counting=True)
        control.safe_point()
        ensure_repository(repo, control)
        control.safe_point()
        # Every attempt of one run tags its snapshot alike, so a resume after a crash
        # that came once restic had finished takes that snapshot instead of a second.
        tag = _run_tag(resume)
        if resume is not None:
            stop_orphan(repo, resume)  # first: a restic still running could yet finish
            done = self._snapshot_tagged(repo, tag, spec.job_id, started)
            if done is not None:
                return done
            adopt_partial_upload(repo, resume, warn)
        roots = restic_roots(spec)
        checkpoint: dict[str, Any] = {"engine": self.name, "repository": str(repo.path),
                                      "started": since, "tag": tag}

        def started_restic(pid: int) -> None:
            # The pid lets a resume or a discard stop the restic of a run that lost its
            # worker (see engines.restic.repo.stop_orphan).
            checkpoint["pid"] = pid
            reporter.checkpoint(dict(checkpoint))

        exclude_file: Path | None = None
        try:
            args = ["backup", "--json", "--verbose=2", *backup_tags(spec.job_id, tag)]
            if spec.include or spec.exclude:
                exclude_file, flags = exclude_args(
                    excluded_paths(spec, roots, control, warn))
                args += flags
            args += ["--", *roots.values()]
            output = BackupOutput(meter, warn, roots)
            output.on_tick = lambda: reporter.checkpoint(
                {**checkpoint, "files_done": meter.state.files_done,
                 "bytes_done": meter.state.bytes_done})
            fin = call(repo, args, "backup", control=control, on_stdout=output.feed,
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
            self._confirm(repo, summary.get("snapshot_id"))
            return self._finish(repo, meter, warn, summary, fin, started)
        if fin.stopped == "cancel":
            drop_partial_upload(repo, since, warn)
            raise Cancelled("the backup was cancelled; restic made no snapshot")
        if fin.stopped == "interrupt":
            raise Interrupted("the backup was interrupted; run it again to resume (restic "
                              "reuses what it uploaded)")
        if fin.code in (0, 3):
            raise EngineError("restic backup finished without reporting its snapshot")
        err = restic_error(repo, "backup", fin, full_place=repo.path)
        if isinstance(err, DiskFull):
            drop_partial_upload(repo, since, warn)
        elif fin.code < 0:
            err = EngineError(f"{err}; run the backup again to resume")
        raise err

    def _confirm(self, repo: ResticRepo, snapshot_id: Any) -> None:
        """Raise unless the snapshot restic reported is in the repository, intact."""
        if not isinstance(snapshot_id, str) or not ID_RE.match(snapshot_id):
            raise EngineError("restic backup finished without reporting its snapshot id")
        # The snapshot file, checked against its own hash, not listed by another restic
        # run (a key derivation each); core lists the destination through restic next.
        if not has_repository(repo.path):
            why = f"the repository {repo.path} is gone (it vanished during the backup)"
        elif not (why := snapshot_file_intact(repo.path, snapshot_id)):
            return
        raise EngineError(f"restic reported snapshot {snapshot_id}, but it cannot be found "
                          f"in the repository at {repo.path} afterwards"
                          + (f": {why}" if why else "") + "; nothing of this run can be "
                          "restored, run the backup again")

    def _finish(self, repo: ResticRepo, meter: ProgressMeter, warn: CollectingReporter,
                summary: Mapping[str, Any], fin: Finished, started: float) -> BackupResult:
        snapshot_id = summary.get("snapshot_id")
        if not isinstance(snapshot_id, str) or not snapshot_id:
            raise EngineError("restic backup finished without reporting its snapshot id")
        if fin.code == 3:
            warn.warning("some source files could not be read; the snapshot was made "
                         "without them")
        files = as_count(summary.get("total_files_processed"))
        nbytes = as_count(summary.get("total_bytes_processed"))
        if fin.code == 0:  # every file made it in: the summary is what `ls` would count
            remember_stats(repo, snapshot_id, files, nbytes)
        meter.update(force=True, phase="done", counting=False, files_done=files,
                     files_total=files, bytes_done=nbytes, bytes_total=nbytes, current_file="")
        # The whole run (repository set-up and selection included), like the other engines.
        return BackupResult(snapshot_id[:SHORT_ID_LEN], files, nbytes,
                            time.monotonic() - started, tuple(warn.warnings))

    # --- listing ------------------------------------------------------------------------

    def _snapshot_tagged(self, repo: ResticRepo, tag: str, job_id: str, started: float
                         ) -> BackupResult | None:
        """The snapshot an earlier attempt of this run finished, if there is one."""
        for snap in list_snapshots(repo, job_id):
            if tag in (snap.get("tags") or []):
                files, size = snapshot_stats(repo, snap)
                short = snap.get("short_id")
                snap_id = short if isinstance(short, str) and short else snap["id"][:SHORT_ID_LEN]
                return BackupResult(snap_id, files, size, time.monotonic() - started)
        return None

    def snapshots(self, spec: BackupSpec) -> list[Snapshot]:
        """List the repository's snapshots, oldest first (none before the first backup)."""
        repo = repo_for(spec)
        if not has_repository(repo.path):
            return []
        snaps = list_snapshots(repo, spec.job_id)
        # Counting a snapshot not seen yet is one restic call each, mostly key derivation:
        # CPU-bound and single-threaded in restic, so a few run side by side.
        with ThreadPoolExecutor(max_workers=LIST_WORKERS, thread_name_prefix="restic") as pool:
            stats = list(pool.map(lambda snap: snapshot_stats(repo, snap), snaps))
        out = []
        for snap, (files, size) in zip(snaps, stats, strict=True):
            short = snap.get("short_id")
            out.append(Snapshot(short if isinstance(short, str) and short
                                else snap["id"][:SHORT_ID_LEN],
                                parse_time(snap["time"]), files, size))
        return sorted(out, key=lambda s: (s.time, s.id))

    # --- restore, verify, delete, clean up ----------------------------------------------

    def restore(self, spec: BackupSpec, snapshot_id: str, target: Path, control: RunControl,
                reporter: Reporter, path: str | None = None,
                overwrite: bool = False) -> RestoreResult:
        """Restore a snapshot, or one path in it, to target/<source name>/..."""
        return restore_snapshot(spec, snapshot_id, target, control, reporter, path, overwrite)

    def verify(self, spec: BackupSpec, snapshot_id: str, control: RunControl,
               reporter: Reporter) -> VerifyResult:
        """Check the repository and read back its data (restic check --read-data)."""
        return verify_snapshot(spec, snapshot_id, control, reporter)

    def delete_snapshots(self, spec: BackupSpec, snapshot_ids: Sequence[str]) -> None:
        """Forget snapshots and prune the data only they used."""
        delete_snapshots(spec, snapshot_ids)

    def discard_partial(self, spec: BackupSpec, resume: Mapping[str, Any] | None = None) -> None:
        """Remove what an interrupted backup left: its dead lock and its uploaded packs."""
        repo = repo_for(spec)
        if not has_repository(repo.path):
            return
        stop_orphans("restic", str(repo.path))
        stop_orphan(repo, resume)
        remove_dead_locks(repo)
        since = run_started(resume)
        if since is not None:
            drop_partial_upload(repo, since, _LogReporter())


class _LogReporter:
    """A reporter for clean-ups nobody watches: warnings go to the log."""

    def progress(self, progress: Any) -> None:
        """Drop a progress update."""

    def checkpoint(self, state: Mapping[str, Any]) -> None:
        """Drop a checkpoint."""

    def warning(self, message: str) -> None:
        """Log a warning."""
        log.warning("%s", message)
