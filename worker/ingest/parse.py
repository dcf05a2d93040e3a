"""Turn source bytes into raw items, whatever the format. No validation here."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
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
    # A datetime (feeds, already UTC), a string (JSON), or None.
    published_at: Any = None
    source: str | None = None
    image_url: str | None = None
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
        items = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SourceError(f"malformed JSON: {exc}") from None
    return [_json_item(obj, f"item {n}") for n, obj in enumerate(items, 1)]


def _json_lines(data: bytes) -> list[RawItem]:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise SourceError(f"not UTF-8: {exc}") from None
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            out.append(RawItem(position=f"line {n}", extra_problems=[f"malformed JSON: {exc.msg}"]))
            continue
        out.append(_json_item(obj, f"line {n}"))
    return out


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
        extra_problems=problems,
    )


def _feed(data: bytes) -> list[RawItem]:
    # Bytes, never a string: given a string that looks like a URL or a path,
    # feedparser would fetch or open it itself.
    parsed = feedparser.parse(data, sanitize_html=False, resolve_relative_uris=False)
    if parsed.bozo and not parsed.entries:
        raise SourceError(f"malformed feed: {parsed.get('bozo_exception')}")
    if not parsed.entries and parsed.version == "":
        raise SourceError("not an RSS or Atom feed")
    feed_title = parsed.feed.get("title") or None
    return [_feed_item(entry, n, feed_title) for n, entry in enumerate(parsed.entries, 1)]


def _feed_item(entry: Any, n: int, feed_title: str | None) -> RawItem:
    when = entry.get("published_parsed") or entry.get("updated_parsed")
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
        published_at=datetime(*when[:6], tzinfo=UTC) if when else None,
        categories=[t.get("term") for t in entry.get("tags", []) if t.get("term")],
        source=feed_title,
        image_url=image,
    )
