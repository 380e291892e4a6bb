"""Verify: read a whole archive and check every member against its manifest."""

from __future__ import annotations

import os
import tarfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from engines.archive.compare import content_problems, expected_kind, metadata_problems
from engines.archive.errors import ArchiveDamaged, counted, some_paths
from engines.archive.index import checked_index, read_manifest
from engines.archive.names import Stored
from engines.archive.read import (
    CHUNK,
    CountingReader,
    Pacer,
    hash_stream,
    member_data,
    member_kind,
    next_member,
    read_archive,
)
from engines.control import RunControl
from engines.manifest import ManifestError
from engines.progress import ProgressMeter, Reporter
from engines.results import VerifyResult

MAX_PROBLEMS = 50


def verify_archive(stored: Stored, control: RunControl, reporter: Reporter,
                   safe_point_bytes: int) -> VerifyResult:
    """Read the whole archive and check every entry, hash and size against the manifest."""
    try:
        manifest = read_manifest(stored.manifest)
        index = checked_index(manifest)
    except ManifestError as err:
        return VerifyResult(False, (str(err),))
    problems: list[str] = []
    if manifest.snapshot_id != stored.snapshot_id:
        problems.append(f"the manifest is for snapshot {manifest.snapshot_id!r}")
    files = [e for e in index.values() if e["type"] == "file"]
    meter = ProgressMeter(reporter)
    meter.update(force=True, phase="verifying", counting=False, files_total=len(files),
                 bytes_total=sum(e["size"] for e in files))
    pacer = Pacer(meter, control, safe_point_bytes)
    seen: set[str] = set()
    checked = 0
    try:
        with read_archive(stored.archive, stored.compression) as (tar, counter):
            while (member := next_member(tar)) is not None:
                control.safe_point()
                checked += _verify_member(tar, member, index, seen, problems, meter, pacer)
            problems.extend(_end_problems(tar, counter))
        if stored.compression == "zstd" and not problems:
            problems.extend(_zstd_frame_problems(stored.archive))
    except (ArchiveDamaged, tarfile.TarError) as err:
        problems.append(f"the archive is damaged: {err}")
    missing = [p for p in index if p not in seen]
    if missing:
        problems.append(f"{counted(missing, 'entry', 'entries')} listed in the manifest "
                        f"are not in the archive: {some_paths(missing)}")
    meter.update(force=True, phase="done", current_file="")
    if len(problems) > MAX_PROBLEMS:
        problems[MAX_PROBLEMS:] = [f"... and {len(problems) - MAX_PROBLEMS} more problems"]
    return VerifyResult(not problems, tuple(problems), checked)


def _verify_member(tar: tarfile.TarFile, member: tarfile.TarInfo,
                   index: Mapping[str, Mapping[str, Any]], seen: set[str], problems: list[str],
                   meter: ProgressMeter, pacer: Pacer) -> int:
    """Check one member against the manifest; return 1 if it was a file that was read."""
    entry = index.get(member.name)
    if entry is None:
        problems.append(f"{member.name!r} is in the archive but not in the manifest")
        return 0
    if member.name in seen:
        problems.append(f"{member.name} is in the archive twice")
        return 0
    seen.add(member.name)
    kind = member_kind(member)
    if kind != expected_kind(entry):
        problems.append(f"{member.name}: a {kind} in the archive, a {expected_kind(entry)} in "
                        "the manifest")
        return 0
    problems.extend(metadata_problems(member, entry))
    if kind == "hardlink" and member.linkname not in seen:
        problems.append(f"{member.name}: a hard link to {member.linkname!r}, which is not "
                        "before it in the archive")
    if kind != "file":
        return 0
    meter.update(current_file=member.name)
    size, digest = hash_stream(member_data(tar, member), entry, pacer)
    problems.extend(content_problems(member.name, entry, size, digest))
    meter.add(files=1)
    return 1


def _end_problems(tar: tarfile.TarFile, counter: CountingReader) -> list[str]:
    """Read to the end of the stream (zstd and gzip check their checksum there) and check
    the tar ends as written: two zero blocks, padded to whole records."""
    while counter.read(CHUNK):
        pass
    if (counter.total < tar.offset + 2 * tarfile.BLOCKSIZE
            or counter.total % tarfile.RECORDSIZE):
        return ["the archive ends early: its end-of-archive marker is missing"]
    return []


_ZSTD_MAGIC = 0xFD2FB528
_ZSTD_SKIPPABLE = 0x184D2A50  # the low 4 bits vary


def _zstd_frame_problems(path: Path) -> list[str]:
    """Walk the zstd frames' block headers to the last byte.

    A stream cut short by up to its 4-byte checksum still decompresses in full, and
    python-zstandard's stream reader does not report the unfinished frame; this does.
    """
    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            pos = 0
            while pos < size:
                fh.seek(pos)
                head = fh.read(8)
                magic = int.from_bytes(head[:4], "little")
                if len(head) >= 8 and magic & 0xFFFFFFF0 == _ZSTD_SKIPPABLE:
                    pos += 8 + int.from_bytes(head[4:8], "little")
                    continue
                if len(head) < 5 or magic != _ZSTD_MAGIC:
                    return [f"the archive has bytes that are not zstd at offset {pos}"]
                descriptor = head[4]
                single_segment = descriptor >> 5 & 1
                pos += (5 + (0 if single_segment else 1) + (0, 1, 2, 4)[descriptor & 3]
                        + (single_segment, 2, 4, 8)[descriptor >> 6])
                last = 0
                while not last:
                    fh.seek(pos)
                    block = int.from_bytes(fh.read(3).ljust(3, b"\xff"), "little")
                    last, kind, block_size = block & 1, block >> 1 & 3, block >> 3
                    pos += 3 + (1 if kind == 1 else block_size)  # kind 1: one byte repeated
                    if pos > size:
                        break
                pos += 4 * (descriptor >> 2 & 1)  # the content checksum, when written
    except OSError as err:
        return [f"the archive cannot be read: {err.strerror or err}"]
    if pos != size:
        return ["the archive ends early: its compressed stream is cut short"]
    return []
