"""Making a run's writes durable: the destination's filesystem only (issue 14)."""

from __future__ import annotations

import os
from pathlib import Path

from engines.durable import fsync_paths, make_durable, sync_filesystem


def test_the_destination_filesystem_is_synced_without_a_system_wide_sync(
        tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f").write_bytes(b"data")
    assert sync_filesystem(tmp_path / "d")  # Linux has syncfs
    make_durable(tmp_path / "d")


def test_the_fallback_fsyncs_files_and_folders_and_skips_symlinks(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"data")
    os.symlink("f", tmp_path / "link")
    os.symlink("missing", tmp_path / "dangling")
    fsync_paths([tmp_path / "f", tmp_path / "link", tmp_path / "dangling", tmp_path])
