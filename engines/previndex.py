"""The previous snapshot's files, packed small, for the next run's quick check.

A re-run asks, per file, what the previous snapshot recorded for the same path (size,
times, mode, inode, owner, hash). Held as the manifest's dicts that cost about 1 KB a
file (100 MB for 100,000 files); here each file is about 120 bytes: its path and values
packed into buffers, found through a table of path hashes (no Python object per
file). A dict is made only for the path asked about. Only files are kept: the
quick check has nothing to ask of a folder or a symlink.
"""

from __future__ import annotations

import struct
from array import array
from collections.abc import Iterable, Mapping
from typing import Any

# size, mtime_ns, mode, ctime_ns, ino, uid, gid, sha256 (raw), which optional keys
# exist, then the path's length and the path (UTF-8, surrogates escaped).
_PACK = struct.Struct("<qqIqQqq32sBH")
_CTIME, _INO, _UID, _GID = 1, 2, 4, 8
_INT64 = (-(1 << 63), (1 << 63) - 1)
_BUFFER = 1 << 20  # packed entries per buffer (one entry is at most 64 KiB)


def _fits(value: Any, unsigned: bool = False) -> bool:
    """Whether a manifest value can be packed as a 64-bit integer (not a bool)."""
    if not isinstance(value, int) or isinstance(value, bool):
        return False
    return 0 <= value < (1 << 64) if unsigned else _INT64[0] <= value <= _INT64[1]


def _name(path: str) -> bytes:
    return path.encode("utf-8", "surrogateescape")


class PreviousFiles:
    """Path -> what the previous snapshot recorded of that file, as a manifest dict.

    An open-addressing table of (path hash, where the packed entry is) in two arrays,
    the entries in 1 MB buffers: nothing grows by copying one large block, and no
    Python object is made per file.
    """

    def __init__(self, entries: Iterable[Mapping[str, Any]] = (), expected: int = 0) -> None:
        self._buffers: list[bytearray] = [bytearray()]
        self._xattrs: dict[str, Any] = {}  # the few files that have any
        self._count = 0
        size = 1024
        while size < expected * 2:  # room for the files the manifest says it has
            size *= 2
        self._hashes = array("q", bytes(8 * size))
        self._slots = array("q", bytes(8 * size))  # 1 + where the entry is; 0: empty
        for entry in entries:
            packed = self._pack(entry)
            if packed is None:
                continue
            buffer = self._buffers[-1]
            if len(buffer) + len(packed) > _BUFFER:
                buffer = bytearray()
                self._buffers.append(buffer)
            where = (len(self._buffers) - 1) * _BUFFER + len(buffer)
            buffer += packed
            if (self._count + 1) * 2 > len(self._slots):
                self._grow()
            self._put(hash(entry["path"]), where + 1)
            self._count += 1
            if entry.get("xattrs"):
                self._xattrs[entry["path"]] = entry["xattrs"]

    def _put(self, key: int, slot: int) -> None:
        mask = len(self._slots) - 1
        index = key & mask
        while self._slots[index]:
            index = (index + 1) & mask
        self._hashes[index] = key
        self._slots[index] = slot

    def _grow(self) -> None:
        hashes, slots = self._hashes, self._slots
        size = len(slots) * 2
        self._hashes = array("q", bytes(8 * size))
        self._slots = array("q", bytes(8 * size))
        for index, slot in enumerate(slots):
            if slot:
                self._put(hashes[index], slot)

    @staticmethod
    def _pack(entry: Mapping[str, Any]) -> bytes | None:
        """A file entry packed; None for anything this cannot stand for exactly (the
        next run then copies that file, which is always correct)."""
        if entry.get("type") != "file" or not isinstance(entry.get("path"), str):
            return None
        digest = entry.get("sha256")
        size, mtime, mode = entry.get("size"), entry.get("mtime_ns"), entry.get("mode")
        if not (isinstance(digest, str) and len(digest) == 64 and _fits(size)
                and _fits(mtime) and isinstance(mode, int) and 0 <= mode < (1 << 32)):
            return None
        try:
            raw = bytes.fromhex(digest)
        except ValueError:
            return None
        name = _name(entry["path"])
        if raw.hex() != digest or len(name) > 0xFFFF:
            return None  # upper case or such: keep the dict's exact text for the record
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
        return _PACK.pack(size, mtime, mode, *values, raw, flags, len(name)) + name

    def __len__(self) -> int:
        return self._count

    def get(self, path: str) -> dict[str, Any] | None:
        """The file's entry as the manifest had it, or None."""
        key = hash(path)
        mask = len(self._slots) - 1
        index = key & mask
        name = _name(path)
        while slot := self._slots[index]:
            index = (index + 1) & mask
            if self._hashes[(index - 1) & mask] != key:
                continue
            buffer = self._buffers[(slot - 1) // _BUFFER]
            at = (slot - 1) % _BUFFER
            fields = _PACK.unpack_from(buffer, at)
            start = at + _PACK.size
            if buffer[start:start + fields[9]] != name:
                continue  # another path with the same hash
            size, mtime, mode, ctime, ino, uid, gid, raw, flags, _ = fields
            out: dict[str, Any] = {"path": path, "type": "file", "size": size,
                                   "mtime_ns": mtime, "mode": mode, "sha256": raw.hex()}
            for bit, field, value in ((_CTIME, "ctime_ns", ctime), (_INO, "ino", ino),
                                      (_UID, "uid", uid), (_GID, "gid", gid)):
                if flags & bit:
                    out[field] = value
            xattrs = self._xattrs.get(path)
            if xattrs:
                out["xattrs"] = xattrs
            return out
        return None
