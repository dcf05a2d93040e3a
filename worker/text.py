"""Control characters: what may never reach a header or a one-line field."""

from __future__ import annotations

import re
import unicodedata

# Cc covers C0 (incl. CR, LF, NUL, TAB), DEL and C1 (incl. NEL); Zl/Zp are
# U+2028 and U+2029, which some clients treat as line breaks.
_BREAKING = ("Cc", "Zl", "Zp")


# The same set as a character class, for speed on the per-message path.
_CONTROL_RE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def contains_control(text: str) -> bool:
    return _CONTROL_RE.search(text) is not None


def single_line(text: str) -> str:
    """Control characters and line breaks become one space; runs of spaces collapse."""
    cleaned = "".join(" " if unicodedata.category(ch) in _BREAKING else ch for ch in text)
    return " ".join(cleaned.split())


# Format characters (Unicode category Cf) are invisible: bidi overrides and isolates
# (U+202A-202E, U+2066-2069) reorder what a reader sees ("Bob\u202eevil" shows reversed),
# zero-width spaces and U+FEFF hide text between letters. The joiners stay: Persian and
# Indic names need ZWNJ, emoji sequences ZWJ, and neither reorders or hides anything.
_KEPT_FORMAT = frozenset("\u200c\u200d")


# Tag characters (U+E0020-E007F, also Cf) draw nothing alone, but after a black flag they
# spell a subdivision flag (Scotland, Wales: Unicode's emoji tag sequences): those stay whole.
_TAG_SEQUENCE = re.compile("\U0001F3F4[\U000E0020-\U000E007E]+\U000E007F")


def visible_text(text: str) -> str:
    """`text` without invisible format characters (Cf) other than the joiners and the tags
    of a flag's emoji tag sequence."""
    if text.isascii():
        return text
    kept, at = [], 0
    for flag in _TAG_SEQUENCE.finditer(text):
        kept += (_without_format(text[at:flag.start()]), flag.group())
        at = flag.end()
    return "".join(kept) + _without_format(text[at:])


def _without_format(text: str) -> str:
    return "".join(ch for ch in text if ch in _KEPT_FORMAT or unicodedata.category(ch) != "Cf")


def visible_line(text: str) -> str:
    """What a person reads as one line (a name, a title): single_line without format characters."""
    return single_line(visible_text(text))
