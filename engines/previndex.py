"""The previous snapshot's files, packed small, for the next run's quick check.

A re-run asks, per file, what the previous snapshot recorded for the same path (size,
times, mode, inode, owner, hash). Held as the manifest's dicts that cost about 1 KB a
file (100 MB for 100,000 files); packed here into one bytes value per path (about a
quarter), read back as a dict only for the path asked about. Only files are kept: the
quick check has nothing to ask of a folder or a symlink.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping
from typing import Any

# size, mtime_ns, mode, ctime_ns, ino, uid, gid, sha256 (raw), which optional keys exist
_PACK = struct.Struct("<qqIqQqq32sB")
_CTIME, _INO, _UID, _GID = 1, 2, 4, 8
_INT64 = (-(1 << 63), (1 << 63) - 1)


def _fits(value: Any, unsigned: bool = False) -> bool:
    """Whether a manifest value can be packed as a 64-bit integer (not a bool)."""
    if not isinstance(value, int) or isinstance(value, bool):
        return False
    return 0 <= value < (1 << 64) if unsigned else _INT64[0] <= value <= _INT64[1]


class PreviousFiles:
    """Path -> what the previous snapshot recorded of that file, as a manifest dict."""

    def __init__(self, entries: Iterable[Mapping[str, Any]] = ()) -> None:
        # Offsets into one buffer: a bytes object per file cost 33 bytes more each.
        self._at: dict[str, int] = {}
        self._data = bytearray()
        self._xattrs: dict[str, Any] = {}  # the few files that have any
        for entry in entries:
            self.add(entry)

    def add(self, entry: Mapping[str, Any]) -> None:
        """Keep a file entry; anything this cannot stand for exactly is left out (the
        next run then copies that file, which is always correct)."""
        if entry.get("type") != "file":
            return
        digest = entry.get("sha256")
        size, mtime, mode = entry.get("size"), entry.get("mtime_ns"), entry.get("mode")
        if not (isinstance(digest, str) and len(digest) == 64 and _fits(size)
                and _fits(mtime) and isinstance(mode, int) and 0 <= mode < (1 << 32)):
            return
        try:
            raw = bytes.fromhex(digest)
        except ValueError:
            return
        if raw.hex() != digest:
            return  # upper case or such: keep the dict's exact text for the record
        flags = 0
        values = []
        for bit, key, unsigned in ((_CTIME, "ctime_ns", False), (_INO, "ino", True),
                                   (_UID, "uid", False), (_GID, "gid", False)):
            value = entry.get(key)
            if _fits(value, unsigned):
                flags |= bit
                values.append(value)
            else:
                values.append(0)
        path = entry["path"]
        self._at[path] = len(self._data)
        self._data += _PACK.pack(size, mtime, mode, values[0], values[1], values[2],
                                 values[3], raw, flags)
        if entry.get("xattrs"):
            self._xattrs[path] = entry["xattrs"]
        else:
            self._xattrs.pop(path, None)

    def __len__(self) -> int:
        return len(self._at)

    def get(self, path: str) -> dict[str, Any] | None:
        """The file's entry as the manifest had it, or None."""
        at = self._at.get(path)
        if at is None:
            return None
        size, mtime, mode, ctime, ino, uid, gid, raw, flags = _PACK.unpack_from(self._data, at)
        out: dict[str, Any] = {"path": path, "type": "file", "size": size,
                               "mtime_ns": mtime, "mode": mode, "sha256": raw.hex()}
        for bit, key, value in ((_CTIME, "ctime_ns", ctime), (_INO, "ino", ino),
                                (_UID, "uid", uid), (_GID, "gid", gid)):
            if flags & bit:
                out[key] = value
        xattrs = self._xattrs.get(path)
        if xattrs:
            out["xattrs"] = xattrs
        return out
