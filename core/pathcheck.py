"""Whether a job's paths are usable: refused when they cannot work, warned when they may.

The rule for a path that does not exist: it is refused, unless it may appear when a
disk is mounted later. That is the case when the nearest folder that does exist is on
another file system than / (a mounted disk, where a folder may come with a nested
mount), or when the path lies under /mnt, /media or /run/media (where disks are
mounted). Then the job is saved with a warning that its page keeps showing while the
path is missing. A destination that does not exist is fine when it can be created (the
first run creates it); under /mnt, /media or /run/media on the system disk it is
warned about, since the disk it is meant for is probably not mounted.

Every function here touches the file system: call them off the event loop.
"""

from __future__ import annotations

import os
import posixpath
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from core.fs_threads import run_path_check
from core.ownership import Owner, local_path, local_relation, owner_conflict
from engines.registry import BY_NAME

MOUNT_ROOTS = ("/mnt", "/media", "/run/media")


@dataclass
class PathReport:
    """What is wrong with a job's paths (by form field) and what only may be."""

    errors: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def nearest_existing(path: str) -> str:
    """The path itself or its nearest parent that exists."""
    current = posixpath.normpath(path)
    while not os.path.lexists(current) and current != "/":
        current = posixpath.dirname(current)
    return current


def under_mount_root(path: str) -> bool:
    """Whether a path lies under a folder where disks are mounted (/mnt, /media, ...)."""
    return any(path == root or path.startswith(root + "/") for root in MOUNT_ROOTS)


def _on_root_fs(path: str) -> bool:
    try:
        return os.stat(path).st_dev == os.stat("/").st_dev
    except OSError:
        return False


def may_mount_later(path: str) -> bool:
    """Whether a missing path may appear when a disk is mounted (see the module doc)."""
    return under_mount_root(path) or not _on_root_fs(nearest_existing(path))


def _can_write(path: str) -> bool:
    return os.access(path, os.W_OK | os.X_OK, effective_ids=True)


def _source(src: str, report: PathReport) -> None:
    if os.path.lexists(src):
        if not os.access(src, os.R_OK, effective_ids=True):
            report.warnings.append(f"source {src} cannot be read by the server "
                                   "(permission denied); runs will fail until it can")
        return
    if may_mount_later(src):
        report.warnings.append(f"source {src} does not exist (yet); it may be on a disk "
                               "that is not mounted; runs fail until it is there")
    else:
        report.errors.setdefault("sources", f"source {src} does not exist")


def _destination(dest: str, report: PathReport) -> None:
    if os.path.lexists(dest):
        if not os.path.isdir(dest):
            report.errors["destination"] = f"destination {dest} is not a folder"
        elif not _can_write(dest):
            report.errors["destination"] = (f"destination {dest} cannot be written by the "
                                            "server (permission denied)")
        return
    parent = nearest_existing(dest)
    if under_mount_root(dest) and _on_root_fs(parent):
        report.warnings.append(f"destination {dest} does not exist and would be created on "
                               "the system disk: the disk meant for it may not be mounted")
        return
    if os.path.isdir(parent) and _can_write(parent):
        return  # the first run creates it
    if may_mount_later(dest):
        report.warnings.append(f"destination {dest} does not exist (yet) and cannot be "
                               f"created in {parent}; runs fail until its disk is mounted")
        return
    why = "is not a folder" if not os.path.isdir(parent) else "cannot be written by the server"
    report.errors["destination"] = f"destination {dest} cannot be created: {parent} {why}"


def _against_sources(dest: str, sources: Iterable[str], report: PathReport) -> None:
    """The models refuse a destination inside a source as written; this sees symlinks."""
    for src in sources:
        found = local_relation(dest, src)
        if found in ("equal", "inside"):
            report.errors["destination"] = (f"destination {dest} is inside source {src} "
                                            "(through a symlink): it would back itself up")
            return
        if found == "contains":
            report.errors["sources"] = (f"source {src} is inside destination {dest} "
                                        "(through a symlink): it would back up its backups")
            return


def _password_file(value: Any, engine: str, report: PathReport) -> None:
    if not isinstance(value, str) or not value.startswith("/"):
        return  # engines.registry says what is wrong with its form
    try:
        info = os.stat(value)
        if not stat.S_ISREG(info.st_mode):
            raise IsADirectoryError(0, "not a regular file")
        with open(value, "rb") as fh:  # a regular file: opening cannot block
            first = fh.readline(4096)
    except OSError as err:
        report.errors["options"] = (f"the {engine} password file {value} cannot be read "
                                    f"({err.strerror or err})")
        return
    if not first.strip(b"\r\n"):
        report.errors["options"] = (f"the {engine} password file {value} is empty: its first "
                                    "line is the repository password")


def check_paths(spec: Mapping[str, Any], old: Mapping[str, Any] | None = None,
                others: Iterable[Owner] = ()) -> PathReport:
    """Check a job's sources, destination, password file and destination owner.

    With `old` (the spec being replaced) only paths that changed are checked for
    existence, so renaming a job whose disk is away is not refused; the owner check
    always runs, since another job may have been saved meanwhile.
    """
    report = PathReport()
    old = old or {}
    old_sources = set(old.get("sources") or ())
    for src in spec.get("sources") or ():
        if src not in old_sources:
            _source(src, report)
    dest, engine = str(spec.get("destination") or ""), str(spec.get("engine") or "")
    conflict = owner_conflict(dest, others, engine)
    if conflict is not None:
        report.errors["destination"] = conflict
    local = local_path(dest, engine)  # None: a remote repository, nothing local to check
    if local is not None and conflict is None:
        _against_sources(local, spec.get("sources") or (), report)
    if local is not None and "destination" not in report.errors \
            and dest != old.get("destination"):
        _destination(local, report)
    info = BY_NAME.get(engine)
    for option in info.options if info is not None else ():
        if option.secret_file:
            value = (spec.get("options") or {}).get(option.name)
            if value != (old.get("options") or {}).get(option.name) \
                    or old.get("engine") != engine:
                _password_file(value, engine, report)
    return report


def path_warnings(spec: Mapping[str, Any], others: Iterable[Owner] = ()) -> list[str]:
    """Warnings about a saved job's paths as they are now, for its page.

    With `others` (Commands.other_owners), also a destination another job shares: jobs
    saved before that was refused may still point two at one place.
    """
    report = check_paths(spec, others=others)
    # On the page, what would refuse a save is still only a warning: the job exists.
    return list(report.errors.values()) + report.warnings


async def path_warnings_off_loop(spec: Mapping[str, Any], within: float = 5.0,
                                 others: Iterable[Owner] = ()) -> list[str]:
    """path_warnings on a path-check thread, bounded in time (a hung mount must not hang)."""
    others = list(others)
    try:
        return await run_path_check(lambda: path_warnings(spec, others), within)
    except TimeoutError:
        return [f"the job's folders did not answer within {within:.0f} s "
                "(a network mount that hangs?)"]
