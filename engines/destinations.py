"""How an engine takes its destination: what it accepts, where that is, what it is keyed by.

A destination is text whose meaning belongs to the engine: a local folder for mirror,
archive and rsync; for restic a repository, a local path or (once the engine can use one)
a URL such as sftp:host:/srv/repo or s3:host/bucket. Every kind answers three questions
without touching the file system (so they may run on the event loop):

- `clean(text)`: the destination as a job stores it, or ValueError saying what is wrong;
- `local_path(text)`: the local folder it writes, or None for a remote one;
- `key(text)`: its identity, for one run per destination and for ownership: the local
  path normalised, or the URL normalised (scheme in lower case, no trailing slash).

Symlinks are resolved by core.ownership, off the event loop, on top of `local_path`.
"""

from __future__ import annotations

import posixpath
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from models.job import MAX_PATH, clean_path
from models.text import control_char, describe

# The repository schemes restic knows besides "local:" (restic's docs, "Preparing a new
# repository"). "local:/x" is the local path /x.
RESTIC_SCHEMES = ("sftp", "rest", "s3", "swift", "b2", "azure", "gs", "rclone")
_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")


class DestinationKind(ABC):
    """What an engine accepts as its destination (see the module doc)."""

    @abstractmethod
    def clean(self, text: Any) -> str:
        """The destination as the job stores it, or ValueError naming what is wrong."""

    @abstractmethod
    def local_path(self, text: str) -> Path | None:
        """The local folder the destination writes, or None for a remote one."""

    def is_remote(self, text: str) -> bool:
        """Whether the destination is reached over the network (opened by the engine)."""
        return False

    def key(self, text: str) -> str:
        """Its identity: the local path normalised, or the normalised text otherwise."""
        local = self.local_path(text)
        return str(local) if local is not None else text.strip()


def _local(text: str) -> Path | None:
    """An absolute path, normalised as written (no I/O), or None."""
    stripped = text.strip()
    if not stripped.startswith("/"):
        return None
    # normpath keeps a leading "//" (POSIX leaves it implementation-defined; Linux reads
    # it as "/"), so "/" and "//" would be two destinations that are one folder.
    return Path("/" + posixpath.normpath(stripped).lstrip("/"))


@dataclass(frozen=True)
class LocalFolder(DestinationKind):
    """A local folder, given as an absolute path."""

    def clean(self, text: Any) -> str:
        """An absolute path without '..', normalised."""
        return clean_path(text, "destination")

    def local_path(self, text: str) -> Path | None:
        """The folder itself."""
        return _local(text)


def _scheme(text: str) -> str | None:
    """The repository scheme of a restic destination ("local", "sftp", ...), or None."""
    match = _SCHEME_RE.match(text.strip())
    return match.group(1).lower() if match else None


@dataclass(frozen=True)
class ResticRepository(DestinationKind):
    """A restic repository: a local path, or with `remote` a URL restic opens itself.

    The URL is stored as typed (restic reads it, not us); only its key is normalised.
    """

    remote: bool = False  # whether the engine can use a repository that is not local

    def clean(self, text: Any) -> str:
        """A local path as LocalFolder takes it; with `remote`, also a restic URL as typed."""
        scheme = _scheme(text) if isinstance(text, str) else None
        if scheme not in ("local", *RESTIC_SCHEMES):
            return clean_path(text, "destination")
        if not self.remote and scheme == "local":
            raise ValueError(f"destination {text!r}: give the path without local: (an "
                             "absolute path, starting with /)")
        if not self.remote:
            raise ValueError(f"destination {text!r} is a remote repository, which the "
                             "restic engine cannot use yet: give an absolute path "
                             "(starting with /)")
        assert isinstance(text, str)
        value = text.strip()
        if len(value) > MAX_PATH:
            raise ValueError(f"destination is longer than {MAX_PATH} characters")
        if (char := control_char(value)) is not None:
            raise ValueError(f"destination must not contain the invisible character "
                             f"{describe(char)}")
        if scheme == "local":
            return "local:" + clean_path(value[len("local:"):], "destination")
        if not value.partition(":")[2].strip("/"):
            raise ValueError(f"destination {value!r} names no repository after {scheme}:")
        return value

    def is_remote(self, text: str) -> bool:
        """Whether it is a repository URL (sftp:, s3:, ...), not a local path."""
        return _scheme(text) in RESTIC_SCHEMES

    def local_path(self, text: str) -> Path | None:
        """The path of a local repository ("/x" or "local:/x"), or None for a URL."""
        stripped = text.strip()
        if _scheme(stripped) == "local":
            stripped = stripped[len("local:"):]
        return _local(stripped)

    def key(self, text: str) -> str:
        """The local path, or the URL with its scheme in lower case and no trailing slash."""
        local = self.local_path(text)
        if local is not None:
            return str(local)
        scheme, _, rest = text.strip().partition(":")
        return f"{scheme.lower()}:{rest.rstrip('/')}"
