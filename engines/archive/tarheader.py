"""Tar member headers, packed in one step: byte for byte what tarfile writes in pax format."""

from __future__ import annotations

import struct
import tarfile

BLOCKSIZE = tarfile.BLOCKSIZE  # 512
RECORDSIZE = tarfile.RECORDSIZE  # 20 blocks; an archive is padded to whole records


# name, mode, uid, gid, size, mtime, checksum, type, linkname, magic and version, uname,
# gname, devmajor, devminor, prefix, then 12 bytes of padding: one 512-byte block.
_USTAR = struct.Struct("100s8s8s8s12s12s8sc100s8s32s32s8s8s155s12x")
_MAGIC = tarfile.POSIX_MAGIC  # b"ustar\x0000"
# The checksum counts its own field as eight spaces, plus every other byte of the block.
_CHECKSUM_BASE = 8 * ord(" ") + sum(_MAGIC)
_NUMBER_LIMIT = 8 ** 11  # size and mtime fit 11 octal digits; beyond, pax records them
_ID_LIMIT = 8 ** 7  # uid and gid fit 7 octal digits; beyond, pax records them
TYPES = {"file": tarfile.REGTYPE, "dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE,
          "hardlink": tarfile.LNKTYPE}


def tar_header(name: str, kind: str, size: int, mtime: int, mode: int,
               linkname: str = "", uid: int = 0, gid: int = 0,
               pax: dict[str, str] | None = None) -> bytes:
    """The header block(s) of one member: byte for byte what tarfile writes in pax format.

    A short ASCII name and link target and numbers that fit make one ustar block, packed
    here; anything else (a long or non-ASCII name, a huge size, a time before 1970, extra
    pax records such as extended attributes) goes through tarfile, which puts a pax
    extended header in front. A "hardlink" names its first path in linkname.
    """
    if kind == "dir" and not name.endswith("/"):
        name += "/"  # as tarfile does; readers strip it again
    if (not pax and name.isascii() and len(name) <= 100 and linkname.isascii()
            and len(linkname) <= 100 and 0 <= size < _NUMBER_LIMIT
            and 0 <= mtime < _NUMBER_LIMIT and 0 <= uid < _ID_LIMIT and 0 <= gid < _ID_LIMIT):
        name_b, link_b = name.encode("ascii"), linkname.encode("ascii")
        mode_b = b"%07o\x00" % (mode & 0o7777)
        uid_b, gid_b = b"%07o\x00" % uid, b"%07o\x00" % gid
        size_b = b"%011o\x00" % size
        mtime_b = b"%011o\x00" % mtime
        kind_b = TYPES[kind]
        checksum = (_CHECKSUM_BASE + sum(name_b) + sum(link_b) + sum(mode_b) + sum(uid_b)
                    + sum(gid_b) + sum(size_b) + sum(mtime_b) + kind_b[0])
        return _USTAR.pack(name_b, mode_b, uid_b, gid_b, size_b, mtime_b,
                           b"%06o\x00 " % checksum, kind_b, link_b, _MAGIC, b"", b"", b"",
                           b"", b"")
    info = tarfile.TarInfo(name)
    info.type, info.size, info.mtime, info.mode = TYPES[kind], size, mtime, mode
    info.linkname, info.uid, info.gid = linkname, uid, gid
    if pax:
        info.pax_headers = dict(pax)
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
