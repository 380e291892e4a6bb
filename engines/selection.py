"""Which files a job takes: include and exclude globs, as in rsync and .gitignore.

A pattern without a slash matches a name at any depth (`*.tmp`, `node_modules`); a
pattern with a slash matches the path from the source's top (`docs/**/*.pdf`); `**`
spans zero or more directories; a trailing slash matches directories only. Excluding a
directory skips everything under it. With include patterns, only matching files (and
everything under matching directories) are taken.
"""

from __future__ import annotations

from collections.abc import Sequence

from wcmatch import fnmatch, glob

_GLOB_FLAGS = glob.GLOBSTAR | glob.DOTGLOB
_NAME_FLAGS = fnmatch.DOTMATCH


class InvalidPattern(ValueError):
    """A glob pattern cannot be used."""


class _Pattern:
    def __init__(self, raw: str) -> None:
        if not raw or "\x00" in raw:
            raise InvalidPattern(f"pattern {raw!r} is empty or has a NUL byte")
        self.raw = raw
        self.dir_only = raw.endswith("/")
        body = raw.rstrip("/")
        self.anchored = "/" in body
        self.body = body.lstrip("/")
        if not self.body:
            raise InvalidPattern(f"pattern {raw!r} matches nothing")

    def matches(self, rel: str, name: str, is_dir: bool) -> bool:
        if self.dir_only and not is_dir:
            return False
        if self.anchored:
            return bool(glob.globmatch(rel, self.body, flags=_GLOB_FLAGS))
        return bool(fnmatch.fnmatch(name, self.body, flags=_NAME_FLAGS))


class Selector:
    """Decides, for a path relative to its source's top, whether a backup takes it."""

    def __init__(self, include: Sequence[str] = (), exclude: Sequence[str] = ()) -> None:
        self.include = [_Pattern(p) for p in include]
        self.exclude = [_Pattern(p) for p in exclude]

    @property
    def filters(self) -> bool:
        """Whether any pattern is set."""
        return bool(self.include or self.exclude)

    def excluded(self, rel: str, is_dir: bool) -> bool:
        """Whether an exclude pattern matches (a directory excluded skips its subtree)."""
        name = rel.rsplit("/", 1)[-1]
        return any(p.matches(rel, name, is_dir) for p in self.exclude)

    def included(self, rel: str, is_dir: bool, parent_included: bool) -> bool:
        """Whether an entry is taken given include patterns (always, without any)."""
        if not self.include or parent_included:
            return True
        name = rel.rsplit("/", 1)[-1]
        return any(p.matches(rel, name, is_dir) for p in self.include)
