"""Invisible control characters: refused in names, paths and URLs a person reads."""

from __future__ import annotations

import unicodedata

# Joiners shape emoji sequences and Indic and Persian writing; U+FE0E/U+FE0F choose
# text or emoji presentation ("❤️" is U+2764 U+FE0F): harmless and needed.
_ALLOWED = frozenset({"\u200c", "\u200d", "\ufe0e", "\ufe0f"})

# Unicode's Default_Ignorable_Code_Point set (DerivedCoreProperties.txt): drawn as
# nothing, so "Photos" and "Photos<U+034F>" look alike and U+3164 alone looks blank.
# Many are category Cf (refused anyway); these ranges catch the Lo, Mn and Cn ones.
_IGNORABLE = (
    (0x00AD, 0x00AD), (0x034F, 0x034F), (0x061C, 0x061C), (0x115F, 0x1160),
    (0x17B4, 0x17B5), (0x180B, 0x180F), (0x200B, 0x200F), (0x202A, 0x202E),
    (0x2060, 0x206F), (0x3164, 0x3164), (0xFE00, 0xFE0F), (0xFEFF, 0xFEFF),
    (0xFFA0, 0xFFA0), (0xFFF0, 0xFFF8), (0x1BCA0, 0x1BCA3), (0x1D173, 0x1D17A),
    (0xE0000, 0xE0FFF),
)


def _ignorable(char: str) -> bool:
    code = ord(char)
    return any(low <= code <= high for low, high in _IGNORABLE)


def control_char(text: str) -> str | None:
    """The first control, format or invisible character in text (U+202E, NUL, ...), or None.

    A bidi override (U+202E) makes "gpj.exe" read as "exe.jpg"; such characters in a
    job name or a path make what a person sees differ from what is used.
    """
    if text.isascii() and text.isprintable():
        return None  # the common case, in C: no control character below U+0080 is printable
    for char in text:
        if char in _ALLOWED:
            continue
        if unicodedata.category(char) in ("Cc", "Cf", "Zl", "Zp") or _ignorable(char):
            return char
    return None


def describe(char: str) -> str:
    """A control character as a person can read it: U+202E (RIGHT-TO-LEFT OVERRIDE)."""
    name = unicodedata.name(char, "")
    return f"U+{ord(char):04X}" + (f" ({name})" if name else "")
