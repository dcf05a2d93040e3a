"""Render each region set once per (process, edition): the rule that keeps premailer
off the per-subscriber path."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from worker.digest import Selection, StoryItem, Window, select_sections
from worker.render.digest import RenderedVariant, render_variant
from worker.settings import Settings


class VariantRenderer:
    """Memoises rendered variants of one edition. Empty selections are cached too
    (as None), so a 'no-stories' region set costs one query, not one per subscriber."""

    def __init__(
        self,
        *,
        settings: Settings,
        window: Window,
        edition_key: str,
        load_stories: Callable[[Sequence[str]], list[StoryItem]],
    ) -> None:
        self._settings = settings
        self._window = window
        self._edition_key = edition_key
        self._load = load_stories
        self._variants: dict[tuple[str, ...], RenderedVariant | None] = {}

    def selection(self, regions: Sequence[str]) -> Selection:
        return select_sections(self._load(regions), tuple(regions),
                               per_region=self._settings.stories_per_region)

    def variant(self, regions: Sequence[str]) -> RenderedVariant | None:
        key = tuple(regions)
        if key not in self._variants:
            selection = self.selection(key)
            self._variants[key] = None if selection.is_empty else render_variant(
                selection=selection, window=self._window, edition_key=self._edition_key,
                settings=self._settings,
            )
        return self._variants[key]

    def __len__(self) -> int:
        return len(self._variants)
