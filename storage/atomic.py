"""Moved to models/atomic.py (below engines and storage); re-exported until every importer moves."""

from __future__ import annotations

from models.atomic import fsync_dir, remove_durable, write_atomic, write_many_atomic

__all__ = ["fsync_dir", "remove_durable", "write_atomic", "write_many_atomic"]
