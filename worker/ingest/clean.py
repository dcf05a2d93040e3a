"""Validate one raw item into a clean story, or say why it is rejected."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import urlsplit

from worker.ingest.parse import RawItem
from worker.ingest.sanitize import clean_title, sanitize_summary, summary_text
from worker.regions import RegionError, normalise_region, parse_regions
from worker.text import single_line, visible_line

# Field limits: generous for real news, small enough that one item cannot push
# a digest past Gmail's 102 KB clip or bloat the database.
MAX_TITLE = 300
MAX_SUMMARY = 20_000
MAX_URL = 2048
# In UTF-8 bytes, not characters: PostgreSQL's unique index on the id holds at most
# 2704 bytes per entry, and 1024 characters can be 4096.
MAX_ID = 1024
MAX_SOURCE = 200

_CODE_LIKE = re.compile(r"^[A-Z]{2}$")
# What JSON's \ud800 escapes decode to: no encoder (nor database) accepts them.
_SURROGATE = re.compile("[\ud800-\udfff]")


@dataclass(frozen=True)
class CleanStory:
    guid: str
    url: str
    title: str
    summary_html: str
    summary_text: str
    published_at: datetime
    source: str
    image_url: str | None
    regions: tuple[str, ...]
    # A BCP 47 tag ('ru', 'en-GB') its feed stated, or None: the reader's page's `lang` then.
    language: str | None = None


# A language tag as BCP 47 spells one; anything else a feed says is dropped, not shown.
_LANGUAGE = re.compile(r"[A-Za-z]{2,3}(?:-[A-Za-z0-9]{1,8}){0,3}")


def story_language(raw: str | None) -> str | None:
    """The feed's language as a `lang` attribute value, or None when it is not a tag."""
    text = (raw or "").strip().replace("_", "-")
    if len(text) > 35 or not _LANGUAGE.fullmatch(text):
        return None
    first, *rest = text.split("-")
    return "-".join([first.lower(), *(part.upper() if len(part) == 2 else part for part in rest)])


class Rejected(Exception):
    """The item is not kept; the message is the reason shown to the user."""


def clean_item(raw: RawItem, *, default_region: str | None = None) -> CleanStory:
    if raw.extra_problems:
        raise Rejected(raw.extra_problems[0])
    for name, value in (("url", raw.url), ("id", raw.guid), ("title", raw.title), ("summary", raw.summary),
                        ("source", raw.source), ("image_url", raw.image_url)):
        if value and _SURROGATE.search(value):
            raise Rejected(f"{name} is not valid Unicode (a lone surrogate)")
    title = clean_title(raw.title or "", is_html=raw.title_is_html)
    if not title:
        raise Rejected("no title")
    _check_length("title", title, MAX_TITLE)
    if not raw.url or not raw.url.strip():
        raise Rejected("no link")
    url = _http_url(raw.url.strip(), "link")
    guid = single_line(raw.guid or "") or url
    size = len(guid.encode())
    if size > MAX_ID:
        raise Rejected(f"id too long ({size} > {MAX_ID} bytes)")
    summary_raw = raw.summary or ""
    _check_length("summary", summary_raw, MAX_SUMMARY)
    summary_html = sanitize_summary(summary_raw)
    source = visible_line(raw.source or "")  # shown under each story
    _check_length("source", source, MAX_SOURCE)
    image = raw.image_url.strip() if raw.image_url else None
    if image:
        _check_length("image_url", image, MAX_URL)
        image = _http_url(image, "image_url")
    return CleanStory(
        guid=guid,
        url=url,
        title=title,
        summary_html=summary_html,
        summary_text=summary_text(summary_html),
        published_at=_published(raw.published_at),
        source=source,
        image_url=image or None,
        regions=_regions(raw, default_region),
        language=story_language(raw.language),
    )


def _check_length(name: str, value: str, limit: int) -> None:
    if len(value) > limit:
        raise Rejected(f"{name} too long ({len(value)} > {limit} characters)")


def _http_url(value: str, name: str) -> str:
    _check_length(name, value, MAX_URL)
    try:
        parts = urlsplit(value)
        host, _port = parts.hostname, parts.port  # .port raises for a port that is not one
    except ValueError:  # an unclosed [ too
        raise Rejected(f"{name} is not a valid URL: {value[:80]!r}") from None
    if parts.scheme.lower() not in ("http", "https") or not host:
        raise Rejected(f"{name} is not an absolute http(s) URL: {value[:80]!r}")
    if any(ord(c) < 33 or ord(c) == 127 for c in value):
        raise Rejected(f"{name} contains spaces or control characters")
    return value


def _published(value: object) -> datetime:
    if isinstance(value, time.struct_time):  # feedparser's, already UTC
        try:
            return datetime(*value[:6], tzinfo=UTC)
        except ValueError:  # feedparser passes on years like 0 or 10000
            raise Rejected("published_at is out of range") from None
    if not isinstance(value, str) or not value.strip():
        raise Rejected("no usable date")
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError:
        raise Rejected(f"published_at is not an ISO 8601 date: {value[:40]!r}") from None
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise Rejected("published_at has no time zone (add Z or an offset)")
    try:
        return moment.astimezone(UTC)
    except OverflowError:  # 9999-12-31T23:00-05:00 is past year 9999 in UTC
        raise Rejected("published_at is out of range") from None


def _regions(raw: RawItem, default_region: str | None) -> tuple[str, ...]:
    try:
        if raw.categories is not None:
            # Feed categories mix region codes with topics; two capital letters
            # mark a region code, and an unknown one is an error, not a topic.
            codes = [normalise_region(t.strip()) for t in raw.categories
                     if _CODE_LIKE.match(t.strip())]
        elif raw.regions is None:
            codes = []
        elif isinstance(raw.regions, str) or (
            isinstance(raw.regions, list) and all(isinstance(code, str) for code in raw.regions)
        ):
            codes = parse_regions(raw.regions)
        else:
            raise Rejected("regions must be a list of codes")
    except RegionError as exc:
        raise Rejected(str(exc)) from None
    codes = list(dict.fromkeys(codes))
    if not codes:
        if default_region is None:
            raise Rejected("no region (tag the item or pass --region)")
        codes = [default_region]
    return tuple(codes)
