"""Invisible control characters: refused in names, paths and URLs a person reads."""

from __future__ import annotations

import unicodedata

# Joiners shape emoji sequences and Indic and Persian writing: harmless and needed.
_ALLOWED = frozenset({"\u200c", "\u200d"})


def control_char(text: str) -> str | None:
    """The first control or format character in text (bidi overrides, NUL, ...), or None.

    A bidi override (U+202E) makes "gpj.exe" read as "exe.jpg"; such characters in a
    job name or a path make what a person sees differ from what is used.
    """
    for char in text:
        if char in _ALLOWED:
            continue
        if unicodedata.category(char) in ("Cc", "Cf", "Zl", "Zp"):
            return char
    return None


def describe(char: str) -> str:
    """A control character as a person can read it: U+202E (RIGHT-TO-LEFT OVERRIDE)."""
    name = unicodedata.name(char, "")
    return f"U+{ord(char):04X}" + (f" ({name})" if name else "")
