"""Turn source bytes into raw items, whatever the format. No validation here."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

import feedparser

from worker.ingest.fetch import SourceError


@dataclass
class RawItem:
    """One item as found, before validation. `position` is how the user finds it."""

    position: str
    guid: str | None = None
    url: str | None = None
    title: str | None = None
    title_is_html: bool = False
    summary: str | None = None
    regions: Any = None
    # Feed <category> values: those that look like region codes become regions.
    categories: list[str] | None = None
    # A time.struct_time (feeds, already UTC), or whatever JSON held.
    published_at: Any = None
    source: str | None = None
    image_url: str | None = None
    # The language its feed states (RSS <language>, Atom xml:lang, JSON "language").
    language: str | None = None
    extra_problems: list[str] = field(default_factory=list)


def parse_items(data: bytes) -> list[RawItem]:
    """Detect RSS/Atom, a JSON array or JSON Lines, and return its items."""
    head = data.lstrip(b"\xef\xbb\xbf \t\r\n")[:1]
    if head == b"[":
        return _json_array(data)
    if head == b"{":
        return _json_lines(data)
    if head == b"<":
        return _feed(data)
    raise SourceError("not RSS, Atom, a JSON array or JSON Lines")


def _json_array(data: bytes) -> list[RawItem]:
    try:
        items = _loads(data)
    except RecursionError:
        raise SourceError("JSON nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
        raise SourceError(f"malformed JSON: {exc}") from None
    return [_json_item(obj, f"item {n}") for n, obj in enumerate(items, 1)]


def _json_lines(data: bytes) -> list[RawItem]:
    out = []
    # Bytes split on LF only: str.splitlines() would also break inside a string at
    # U+2028, U+0085 and the like, which JSON allows unescaped.
    for n, line in enumerate(data.split(b"\n"), 1):
        if not line.strip():
            continue
        position = f"line {n}"
        try:
            obj = _loads(line.decode("utf-8-sig"))
        except UnicodeDecodeError as exc:
            out.append(RawItem(position=position, extra_problems=[f"not UTF-8: {exc}"]))
        except json.JSONDecodeError as exc:
            out.append(RawItem(position=position, extra_problems=[f"malformed JSON: {exc.msg}"]))
        except RecursionError:
            out.append(RawItem(position=position, extra_problems=["JSON nested too deeply"]))
        else:
            out.append(_json_item(obj, position))
    return out


def _loads(text: str | bytes) -> Any:
    return json.loads(text, parse_int=_int)


def _int(digits: str) -> int | float:
    # Past Python's limit on digits (4300) int() would fail the whole document; a float
    # (inf) fails only the type check of the field it is in.
    try:
        return int(digits)
    except ValueError:
        return float(digits)


def _json_item(obj: Any, position: str) -> RawItem:
    if not isinstance(obj, dict):
        return RawItem(position=position, extra_problems=["not a JSON object"])
    problems = [
        f"{key} must be text" for key in ("id", "url", "title", "summary", "source", "image_url")
        if obj.get(key) is not None and not isinstance(obj.get(key), str)
    ]
    text = {k: obj.get(k) if isinstance(obj.get(k), str) else None for k in
            ("id", "url", "title", "summary", "source", "image_url")}
    return RawItem(
        position=position,
        guid=text["id"] or text["url"],
        url=text["url"],
        title=text["title"],
        summary=text["summary"],
        regions=obj.get("regions"),
        published_at=obj.get("published_at"),
        source=text["source"],
        image_url=text["image_url"],
        language=obj.get("language") if isinstance(obj.get("language"), str) else None,
        extra_problems=problems,
    )


# XML 1.0 allows a character reference only to these; feedparser's lenient fallback
# parser raises on the rest (a surrogate, past U+10FFFF) and would lose the whole feed.
_CHARREF = re.compile(rb"&#([xX][0-9a-fA-F]+|[0-9]+);")


def _xml_char(match: re.Match[bytes]) -> bytes:
    ref = match[1]
    if len(ref) > 8:
        return b"&#xFFFD;"
    code = int(ref[1:], 16) if ref[:1] in b"xX" else int(ref)
    valid = code in (0x9, 0xA, 0xD) or 0x20 <= code <= 0xD7FF or 0xE000 <= code <= 0xFFFD or 0x10000 <= code <= 0x10FFFF
    return match[0] if valid else b"&#xFFFD;"


# feedparser's time is quadratic in the attributes of one element (a 10 MB tag of them
# would take hours); real feeds have a handful. Only a tag long enough to hold more than
# the limit is counted, with its quoted values taken out.
MAX_ATTRIBUTES = 256
_LONG_TAG = re.compile(rb"<[^<>]{%d,}" % (2 * MAX_ATTRIBUTES))
_QUOTED = re.compile(rb"\"[^\"]*\"|'[^']*'")
_VALUE = re.compile(rb"=\s*[^\s>]*")
_NAME = re.compile(rb"[^\s/>]+")


def _check_attributes(data: bytes) -> None:
    for tag in _LONG_TAG.finditer(data):
        names = _NAME.findall(_VALUE.sub(b"", _QUOTED.sub(b"v", tag[0][1:])))
        if len(names) - 1 > MAX_ATTRIBUTES:  # the first is the element's own name
            raise SourceError(f"an element with more than {MAX_ATTRIBUTES} attributes "
                              f"(at byte {tag.start()}): not a feed")


def _feed(data: bytes) -> list[RawItem]:
    # Bytes, never a string: given a string that looks like a URL or a path,
    # feedparser would fetch or open it itself.
    _check_attributes(data)
    data = _CHARREF.sub(_xml_char, data)
    parsed = feedparser.parse(data, sanitize_html=False, resolve_relative_uris=False)
    if parsed.bozo and not parsed.entries:
        raise SourceError(f"malformed feed: {parsed.get('bozo_exception')}")
    if not parsed.entries and parsed.version == "":
        raise SourceError("not an RSS or Atom feed")
    feed_title = parsed.feed.get("title") or None
    language = parsed.feed.get("language") or None
    return [_feed_item(entry, n, feed_title, language) for n, entry in enumerate(parsed.entries, 1)]


def _feed_item(entry: Any, n: int, feed_title: str | None, feed_language: str | None = None) -> RawItem:
    summary = entry.get("summary")
    if entry.get("content"):
        summary = summary or entry["content"][0].get("value")
    title_detail = entry.get("title_detail") or {}
    image = None
    for enclosure in entry.get("enclosures", []):
        if str(enclosure.get("type", "")).startswith("image/"):
            image = enclosure.get("href")
            break
    return RawItem(
        position=f"entry {n}",
        guid=entry.get("id") or entry.get("link"),
        url=entry.get("link"),
        title=entry.get("title"),
        title_is_html=title_detail.get("type") == "text/html",
        summary=summary,
        # feedparser already turned every date into UTC.
        published_at=entry.get("published_parsed") or entry.get("updated_parsed"),
        categories=[t.get("term") for t in entry.get("tags", []) if t.get("term")],
        source=feed_title,
        image_url=image,
        # feedparser gives each text its xml:lang, the feed's own when the entry has none.
        language=title_detail.get("language") or feed_language,
    )
