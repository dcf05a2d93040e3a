"""Which stories go into a region set's digest. Pure: no database, no clock."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
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
    # The language its feed stated (a BCP 47 tag), or None.
    language: str | None = None


@dataclass(frozen=True)
class Section:
    region: str
    stories: tuple[StoryItem, ...]


@dataclass(frozen=True)
class Selection:
    """One variant's content: the ordered region set and its non-empty sections."""

    regions: tuple[str, ...]
    sections: tuple[Section, ...]
    # A quiet week (NEWSLETTER_QUIET_WEEK=wider): no section, and the site's stories of the
    # week instead, the most opened first (`by_opens`), else the newest.
    wider: tuple[StoryItem, ...] = ()
    by_opens: bool = False

    @property
    def is_empty(self) -> bool:
        """No stories at all: delivery skips these subscribers with reason `no-stories`."""
        return not self.sections and not self.wider

    @property
    def shown(self) -> tuple[Section, ...]:
        """What the digest shows: its sections, or a quiet week's one section of the site's
        stories (region "")."""
        return self.sections or ((Section(region="", stories=self.wider),) if self.wider else ())

    @property
    def story_count(self) -> int:
        return sum(len(s.stories) for s in self.shown)


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


def select_wider(stories: Iterable[StoryItem], opens: Mapping[int, int], regions: Sequence[str], *,
                 limit: int) -> Selection:
    """A quiet week's digest for `regions`: the week's stories across the site, the most
    opened (`opens`: story id -> readers' opens) first, then the newest."""
    ranked = sorted(stories, key=lambda story: (-opens.get(story.id, 0), *_newest_first(story)))[:limit]
    return Selection(regions=tuple(regions), sections=(), wider=tuple(ranked),
                     by_opens=any(opens.get(story.id, 0) for story in ranked))
