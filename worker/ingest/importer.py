"""Upsert clean stories by id, and account for every item."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from sqlalchemy import Engine, select
from sqlalchemy.orm import object_session

from worker.ingest.clean import CleanStory, Rejected, clean_item
from worker.ingest.fetch import SourceError, read_source
from worker.ingest.parse import parse_items
from worker.redact import mask_url
from worker.store.db import session_scope
from worker.store.models import Story, StoryRegion
from worker.text import single_line

# A reason is one line for a person; a hostile value quoted in one could be megabytes.
MAX_REASON = 300
# A week's feed holds tens of items. A 10 MB source of tiny bad items could otherwise
# hold millions, each a rejection kept in memory and printed.
MAX_ITEMS = 10_000


@dataclass(frozen=True)
class Rejection:
    source: str
    position: str
    reason: str

    @classmethod
    def of(cls, source: str, position: str, reason: str) -> Rejection:
        reason = single_line(reason)
        return cls(source, position, reason if len(reason) <= MAX_REASON else reason[: MAX_REASON - 1] + "…")

    def __str__(self) -> str:
        source = mask_url(self.source)
        where = f"{source}: {self.position}" if self.position else source
        return f"{where}: {self.reason}"


@dataclass
class ImportReport:
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    rejected: list[Rejection] = field(default_factory=list)


_FIELDS = ("url", "title", "summary_html", "summary_text", "published_at", "source", "image_url", "language")


def import_sources(
    engine: Engine, sources: Iterable[str], *, default_region: str | None = None, allow_private: bool = False
) -> ImportReport:
    """Read every source, keep the valid items, report the rest. One transaction per source.

    Nothing a source holds makes this raise: an unreadable source, or an item that breaks
    something unforeseen, is one rejection and the run goes on. allow_private lets URLs
    reach loopback, private and link-local addresses (NEWSLETTER_FETCH_ALLOW_PRIVATE).
    """
    report = ImportReport()
    first_seen: dict[str, str] = {}
    for source in sources:
        try:
            data = read_source(source, allow_private=allow_private)
        except SourceError as exc:
            report.rejected.append(Rejection.of(source, "", str(exc)))
            continue
        _import_data(engine, source, data, default_region=default_region, report=report, first_seen=first_seen)
    return report


def import_data(engine: Engine, source: str, data: bytes, *, default_region: str | None = None) -> ImportReport:
    """What import_sources does with one source's bytes, already read (a polled feed)."""
    report = ImportReport()
    _import_data(engine, source, data, default_region=default_region, report=report, first_seen={})
    return report


def _import_data(engine: Engine, source: str, data: bytes, *, default_region: str | None,
                 report: ImportReport, first_seen: dict[str, str]) -> None:
    try:
        raws = parse_items(data)
    except SourceError as exc:
        report.rejected.append(Rejection.of(source, "", str(exc)))
        return
    except Exception as exc:  # a parser's own bug on hostile input costs this source only
        report.rejected.append(Rejection.of(source, "", _internal(exc)))
        return
    stories: list[CleanStory] = []
    if len(raws) > MAX_ITEMS:
        reason = f"{len(raws)} items, more than {MAX_ITEMS:,}: items after the {MAX_ITEMS:,}th were not read"
        report.rejected.append(Rejection.of(source, "", reason))
        raws = raws[:MAX_ITEMS]
    for raw in raws:
        try:
            story = clean_item(raw, default_region=default_region)
        except Rejected as exc:
            report.rejected.append(Rejection.of(source, raw.position, str(exc)))
            continue
        except Exception as exc:  # a check's own bug on hostile input costs this item only
            report.rejected.append(Rejection.of(source, raw.position, _internal(exc)))
            continue
        where = f"{source}: {raw.position}"
        if story.guid in first_seen:
            reason = f"duplicate id {story.guid[:80]!r} (first at {first_seen[story.guid]})"
            report.rejected.append(Rejection.of(source, raw.position, reason))
            continue
        first_seen[story.guid] = where
        stories.append(story)
    _upsert(engine, stories, report)


def _internal(exc: Exception) -> str:
    return f"internal error ({type(exc).__name__}: {exc}), please report it"


def _upsert(engine: Engine, stories: list[CleanStory], report: ImportReport) -> None:
    # Chunks keep the IN (...) list within every database's parameter limit.
    for start in range(0, len(stories), 500):
        chunk = stories[start : start + 500]
        with session_scope(engine) as session:
            existing = {
                s.guid: s
                for s in session.scalars(select(Story).where(Story.guid.in_([c.guid for c in chunk])))
            }
            for clean in chunk:
                row = existing.get(clean.guid)
                if row is None:
                    session.add(_new_story(clean))
                    report.added += 1
                elif _apply(row, clean):
                    report.updated += 1
                else:
                    report.unchanged += 1


def _new_story(clean: CleanStory) -> Story:
    story = Story(guid=clean.guid, **{f: getattr(clean, f) for f in _FIELDS})
    story.regions = [StoryRegion(region=r, position=i) for i, r in enumerate(clean.regions)]
    return story


def _apply(row: Story, clean: CleanStory) -> bool:
    changed = False
    for name in _FIELDS:
        if getattr(row, name) != getattr(clean, name):
            setattr(row, name, getattr(clean, name))
            changed = True
    if tuple(row.region_codes) != clean.regions:
        row.regions.clear()
        # Flush the removals first so re-adding the same (story, region) key
        # does not collide inside one flush.
        object_session(row).flush()
        row.regions.extend(StoryRegion(region=r, position=i) for i, r in enumerate(clean.regions))
        changed = True
    return changed
