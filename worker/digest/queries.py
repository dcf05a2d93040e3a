"""Small queries that feed the pure selection."""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import select
from sqlalchemy.orm import Session

from worker.digest.select import StoryItem
from worker.digest.week import Window
from worker.store.models import Story, StoryRegion


def fetch_window_stories(
    session: Session, window: Window, regions: Iterable[str] | None = None
) -> list[StoryItem]:
    """Stories published in [window.start, window.end), optionally only those tagged with `regions`."""
    query = select(Story).where(
        Story.published_at >= window.start, Story.published_at < window.end
    )
    if regions is not None:
        tagged = select(StoryRegion.story_id).where(StoryRegion.region.in_(list(regions)))
        query = query.where(Story.id.in_(tagged))
    return [_item(story) for story in session.scalars(query.order_by(Story.id))]


def _item(story: Story) -> StoryItem:
    return StoryItem(
        id=story.id,
        guid=story.guid,
        url=story.url,
        title=story.title,
        summary_html=story.summary_html,
        summary_text=story.summary_text,
        published_at=story.published_at,
        source=story.source,
        image_url=story.image_url,
        regions=tuple(story.region_codes),
        language=story.language,
    )
