"""Control characters: what may never reach a header or a one-line field."""

from __future__ import annotations

import unicodedata

# Cc covers C0 (incl. CR, LF, NUL, TAB), DEL and C1 (incl. NEL); Zl/Zp are
# U+2028 and U+2029, which some clients treat as line breaks.
_BREAKING = ("Cc", "Zl", "Zp")


def contains_control(text: str) -> bool:
    return any(unicodedata.category(ch) in _BREAKING for ch in text)


def single_line(text: str) -> str:
    """Control characters and line breaks become one space; runs of spaces collapse."""
    cleaned = "".join(" " if unicodedata.category(ch) in _BREAKING else ch for ch in text)
    return " ".join(cleaned.split())
