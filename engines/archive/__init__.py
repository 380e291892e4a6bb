"""The archive engine: one compressed tar (.tar.zst, or .tar.gz) and one manifest per run.

One job per module:

- engine.py: ArchiveEngine (backup, listing, deleting, discarding a partial; the rest
  handed to the modules below)
- names.py: the engine's file names in a destination and which snapshots are complete
- write.py: streaming the scanned entries into a compressed tar; readfile.py reads the
  source files, tarheader.py packs member headers, meta.py adds owner, attributes and
  hard links, tarstream.py gathers the stream into blocks, compress.py hashes,
  compresses and writes them on threads of their own
- read.py: the decompressed tar stream and its members; index.py checks a manifest
  before it is trusted; compare.py says how a member differs from its entry
- restore.py: which members a restore writes; target.py writes them safely
- verify.py: reading a whole archive against its manifest
- errors.py: how failures are worded
"""

from __future__ import annotations

from engines.archive.engine import ArchiveEngine

__all__ = ["ArchiveEngine"]
