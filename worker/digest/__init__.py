"""The week's selection: windows, per-region sections (pure), and the query that feeds them."""

from worker.digest.keys import RegionSet, weekly_edition_key
from worker.digest.select import Section, Selection, StoryItem, select_sections, select_wider
from worker.digest.week import (
    Window,
    custom_window,
    parse_week,
    previous_week,
    week_of,
    week_window,
)

__all__ = [
    "RegionSet",
    "weekly_edition_key",
    "Section",
    "Selection",
    "StoryItem",
    "Window",
    "custom_window",
    "parse_week",
    "previous_week",
    "select_sections",
    "select_wider",
    "week_of",
    "week_window",
]
