"""The mirror engine: dated snapshot directories of plain files, unchanged files hard-linked.

- engine.py: MirrorEngine (backup; listing, restore, verify and prune come from the tree
  layout it shares with the rsync engine, engines/treestore.py)
- copier.py: the work on one file (keep it, hard-link it to the previous snapshot, or copy
  it) and its manifest record
- journal.py: the hashes of files already complete in a partial snapshot, for resume
"""

from __future__ import annotations

from engines.mirror.engine import MirrorEngine

__all__ = ["MirrorEngine"]
