"""The mirror engine's resume journal: hashes of files already complete in a partial snapshot."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any


class Journal:
    """Hashes of files already complete in a partial snapshot, for resume."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.done: dict[str, tuple[int, int, str]] = {}
        with contextlib.suppress(FileNotFoundError):
            text = path.read_text(encoding="utf-8", errors="surrogateescape")
            # Only whole lines: a kill mid-write leaves a torn last line whose cut-off
            # path could name another file. Not splitlines: names may hold \u2028.
            for line in text.split("\n")[:-1]:
                parts = line.split("\t", 3)
                if len(parts) == 4 and parts[0].isdigit() and parts[1].isdigit():
                    self.done[parts[3]] = (int(parts[0]), int(parts[1]), parts[2])
        # surrogateescape: a file name that is not UTF-8 is recorded as its bytes.
        self._fh: IO[str] = open(path, "a", encoding="utf-8",  # noqa: SIM115
                                 errors="surrogateescape")

    def record(self, record: Mapping[str, Any]) -> None:
        """Note a finished file (the write is made durable at the next sync)."""
        rel = record["path"]
        if "\n" not in rel:
            self._fh.write(f"{record['size']}\t{record['mtime_ns']}\t{record['sha256']}"
                           f"\t{rel}\n")

    def sync(self) -> None:
        """Flush the journal to disk (before a checkpoint refers to it)."""
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        """Close the journal file."""
        self._fh.close()
