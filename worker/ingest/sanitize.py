"""Make story text safe: single-line titles, allowlisted summary HTML, a plain-text twin."""

from __future__ import annotations

import html
import re

import nh3

from worker.text import visible_line, visible_text

# What a digest summary may contain. No images (tracking pixels, data: URLs),
# no style, no classes: the digest's own CSS decides how it looks.
SUMMARY_TAGS = {"p", "br", "a", "em", "strong", "b", "i", "ul", "ol", "li", "blockquote"}
SUMMARY_ATTRIBUTES = {"a": {"href", "title"}}
URL_SCHEMES = {"http", "https", "mailto"}

_PARA_END = re.compile(r"(?i)<\s*/(p|blockquote|ul|ol)\s*>")
_LINE_END = re.compile(r"(?i)<\s*(br\s*/?|/li)\s*>")
_SPACES = re.compile(r"[ \t\u00a0]+")
_BLANK_LINES = re.compile(r"\n{3,}")


def clean_title(text: str, *, is_html: bool = False) -> str:
    if is_html:
        text = html.unescape(nh3.clean(text, tags=set()))
    return visible_line(text)


def sanitize_summary(raw: str) -> str:
    """Allowlisted HTML: scripts, styles, links, handlers, javascript:/data: URLs removed."""
    # Invisible format characters (bidi overrides) go before anything else reads it.
    return nh3.clean(
        visible_text(raw),
        tags=SUMMARY_TAGS,
        attributes=SUMMARY_ATTRIBUTES,
        url_schemes=URL_SCHEMES,
        url_relative="deny",
        link_rel="noopener noreferrer",
    ).strip()


def summary_text(clean_html: str) -> str:
    """The plain-text form of sanitised summary HTML, paragraphs kept apart."""
    marked = _LINE_END.sub("\n", _PARA_END.sub("\n\n", clean_html))
    text = html.unescape(nh3.clean(marked, tags=set()))
    lines = [_SPACES.sub(" ", line).strip() for line in text.replace("\r", "").split("\n")]
    text = "\n".join(lines)
    return _BLANK_LINES.sub("\n\n", text).strip()
