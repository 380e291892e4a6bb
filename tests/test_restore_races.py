"""Restores on several threads, and manifests that restore could not use: found in review."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from engines.base import BackupSpec, RunControl
from engines.manifest_stream import ManifestWriter
from engines.mirror import MirrorEngine
from tests.engine_helpers import RecordingReporter, write


def _clashing_names() -> tuple[str, str]:
    """Two file names whose restore temporary names (8 hex digits of a hash) are one."""
    seen: dict[str, str] = {}
    index = 0
    while True:
        name = f"z{index}"
        digest = hashlib.sha256(name.encode()).hexdigest()[:8]
        if digest in seen:
            first, second = sorted((seen[digest], name))
            return first, second
        seen[digest] = name
        index += 1


def test_two_files_sharing_a_temporary_name_restore_each_with_its_own_bytes(
        tmp_path: Path) -> None:
    # The restore copies files on four threads, 64 files a batch. Each batch below ends
    # with one of the two names, so both are written at the same moment: each removed
    # or took the other's temporary file (a wrong file, or a failed restore).
    first, second = _clashing_names()
    src = tmp_path / "src"
    for i in range(63):
        write(src / f"a{i:03d}", b"x" * i)
    write(src / first, os.urandom(32 * 1024 * 1024))  # slow: the other lands meanwhile
    assert first < f"{first}_" < second
    for i in range(63):
        write(src / f"{first}_{i:03d}", b"y" * i)
    write(src / second, b"the second file\n")
    spec = BackupSpec.build([src], tmp_path / "dest", job_id="job-1")
    snapshot = MirrorEngine().backup(spec, RunControl(), RecordingReporter()).snapshot_id
    for attempt in range(3):
        out = tmp_path / f"out{attempt}"
        MirrorEngine().restore(spec, snapshot, out, RunControl(), RecordingReporter())
        assert (out / "src" / second).read_bytes() == b"the second file\n"
        assert (out / "src" / first).read_bytes() == (src / first).read_bytes()
        assert not [p for p in (out / "src").iterdir() if p.name.startswith(".bm-")]


def test_a_file_entry_without_its_hash_fails_the_manifest_not_the_restore(
        tmp_path: Path) -> None:
    # The checksum covers whatever was written, so such an entry passed the listing
    # (the run succeeded) and only the restore refused the manifest.
    with ManifestWriter(tmp_path / "m.json", "2026-01-01T000000Z", "mirror",
                        "2026-01-01T00:00:00Z", {"src": "/data/src"}, "job-1") as writer:
        writer.add({"path": "src", "type": "dir", "mode": 0o755, "mtime_ns": 1})
        with pytest.raises(ValueError, match="lacks its size or hash"):
            writer.add({"path": "src/a", "type": "file", "size": 3})
