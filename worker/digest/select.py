"""Which stories go into a region set's digest. Pure: no database, no clock."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True)
class StoryItem:
    """A story as rendering needs it, detached from the database."""

    id: int
    guid: str
    url: str
    title: str
    summary_html: str
    summary_text: str
    published_at: datetime
    source: str
    image_url: str | None
    regions: tuple[str, ...]


@dataclass(frozen=True)
class Section:
    region: str
    stories: tuple[StoryItem, ...]


@dataclass(frozen=True)
class Selection:
    """One variant's content: the ordered region set and its non-empty sections."""

    regions: tuple[str, ...]
    sections: tuple[Section, ...]

    @property
    def is_empty(self) -> bool:
        """No stories at all: delivery skips these subscribers with reason `no-stories`."""
        return not self.sections

    @property
    def story_count(self) -> int:
        return sum(len(s.stories) for s in self.sections)


def _newest_first(story: StoryItem) -> tuple:
    # Ties broken by id so the same input always gives the same digest.
    return (-story.published_at.timestamp(), story.id)


def select_sections(
    stories: Iterable[StoryItem], regions: Sequence[str], *, per_region: int
) -> Selection:
    """One section per region in the subscriber's order, newest first, capped.

    A story tagged with several of the set's regions appears once, in the first
    section (in the subscriber's order) that has it; empty sections are dropped.
    """
    ordered = sorted(stories, key=_newest_first)
    used: set[int] = set()
    sections: list[Section] = []
    for region in regions:
        picked: list[StoryItem] = []
        for story in ordered:
            if len(picked) >= per_region:
                break
            if region in story.regions and story.id not in used:
                picked.append(story)
                used.add(story.id)
        if picked:
            sections.append(Section(region=region, stories=tuple(picked)))
    return Selection(regions=tuple(regions), sections=tuple(sections))
