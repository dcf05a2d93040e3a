"""Atom 1.0 (RFC 4287) written by ElementTree: every value is text the serializer escapes,
never markup we assemble."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from datetime import UTC, datetime

ATOM_NS = "http://www.w3.org/2005/Atom"
ATOM_TYPE = "application/atom+xml; charset=utf-8"
# Characters XML 1.0 cannot carry at all, escaped or not (its Char production): a control
# character in a title or a configured name is dropped rather than making the feed unreadable.
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


@dataclass(frozen=True)
class Entry:
    id: str
    title: str
    link: str
    updated: datetime
    summary: str | None = None


@dataclass(frozen=True)
class Feed:
    id: str
    title: str
    author: str
    self_url: str
    alternate_url: str
    # The newest entry's; a feed without entries still needs one.
    updated: datetime
    entries: tuple[Entry, ...]


def atom_xml(feed: Feed) -> bytes:
    root = ET.Element("feed", {"xmlns": ATOM_NS})
    _text(root, "id", feed.id)
    _text(root, "title", feed.title)
    _text(root, "updated", _instant(feed.updated))
    _text(ET.SubElement(root, "author"), "name", feed.author)
    _link(root, "self", feed.self_url, "application/atom+xml")
    _link(root, "alternate", feed.alternate_url, "text/html")
    for entry in feed.entries:
        item = ET.SubElement(root, "entry")
        _text(item, "id", entry.id)
        _text(item, "title", entry.title)
        _text(item, "updated", _instant(entry.updated))
        _link(item, "alternate", entry.link, "text/html")
        if entry.summary:
            _text(item, "summary", entry.summary).set("type", "text")
    return ET.tostring(root, encoding="utf-8", xml_declaration=True)


def _text(parent: ET.Element, tag: str, value: str) -> ET.Element:
    element = ET.SubElement(parent, tag)
    element.text = _NOT_XML.sub("", value)
    return element


def _link(parent: ET.Element, rel: str, href: str, media_type: str) -> None:
    ET.SubElement(parent, "link", {"rel": rel, "type": media_type, "href": _NOT_XML.sub("", href)})


def _instant(moment: datetime) -> str:
    # RFC 3339 in UTC, whole seconds: what Last-Modified can say too.
    return moment.astimezone(UTC).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")
