"""What a stored copy holds, read back from its HTML: each section's heading and story titles.

The inliner keeps class attributes (inline.py: remove_classes=False), so the digest's own
`section-title` and `story-title` elements are found as the template wrote them. A story's
title cannot open one: it reaches the template as escaped text.
"""

from __future__ import annotations

from html.parser import HTMLParser


def section_titles(html: str) -> list[tuple[str, list[str]]]:
    """[(section heading, [story titles in order]), ...] of a stored copy."""
    reader = _Reader()
    reader.feed(html)
    reader.close()
    return reader.sections


class _Reader(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.sections: list[tuple[str, list[str]]] = []
        self._open: str | None = None  # the tag of the heading being read
        self._kind = ""
        self._text: list[str] = []

    def handle_starttag(self, tag, attrs):
        kind = _kind(tag, dict(attrs).get("class") or "")
        if self._open is None and kind:
            self._open, self._kind, self._text = tag, kind, []

    def handle_endtag(self, tag):
        if tag != self._open:
            return
        text = " ".join("".join(self._text).split())
        if self._kind == "section":
            self.sections.append((text, []))
        elif self.sections:
            self.sections[-1][1].append(text)
        self._open = None

    def handle_data(self, data):
        if self._open is not None:
            self._text.append(data)


def _kind(tag: str, classes: str) -> str:
    names = classes.split()
    if tag == "h2" and "section-title" in names:
        return "section"
    if tag == "h3" and "story-title" in names:
        return "story"
    return ""
