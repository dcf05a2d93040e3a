"""Render each region set once per (process, edition): the rule that keeps premailer
off the per-subscriber path."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from enum import StrEnum

from worker.digest import Selection, StoryItem, Window, select_sections
from worker.render.digest import RenderedVariant, render_variant
from worker.render.links import ClickLinks
from worker.render.sections import SectionCache
from worker.settings import Settings

log = logging.getLogger(__name__)


class Stored(StrEnum):
    """What the store holds for a region set, when it holds no rendered variant."""

    MISSING = "missing"      # nobody claimed it, or its renderer died before saving
    RENDERING = "rendering"  # claimed; the renderer has not saved it yet
    EMPTY = "empty"          # rendered before, and the selection was empty


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
        store=None,
        clicks: ClickLinks | None = None,
        wider: Callable[[tuple[str, ...]], Selection] | None = None,
    ) -> None:
        self._settings = settings
        self._window = window
        self._edition_key = edition_key
        self._load = load_stories
        self._variants: dict[tuple[tuple[str, ...], str], RenderedVariant | None] = {}
        # Optional shared store (worker.delivery.variants.VariantStore): render once across processes.
        self._store = store
        self._clicks = clicks
        # NEWSLETTER_QUIET_WEEK=wider: a region set without stories gets this instead.
        self._wider = wider
        self._locks: dict[tuple[tuple[str, ...], str], threading.Lock] = {}
        self._locks_guard = threading.Lock()
        # The edition's inlined sections: a region set's HTML is assembled from them.
        self._sections = SectionCache()

    def selection(self, regions: Sequence[str]) -> Selection:
        chosen = select_sections(self._load(regions), tuple(regions), per_region=self._settings.stories_per_region)
        if chosen.is_empty and self._wider is not None:
            return self._wider(tuple(regions))
        return chosen

    def variant(self, regions: Sequence[str], language: str | None = None) -> RenderedVariant | None:
        """The variant of `regions` in `language` (None: NEWSLETTER_LANGUAGE)."""
        key = (tuple(regions), language or self._settings.language)
        if key in self._variants:
            return self._variants[key]
        # Delivery lanes (threads) of one process mostly need the same variant at the
        # same moment: one of them fetches or renders it, the others wait on its lock.
        with self._locks_guard:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            if key not in self._variants:
                self._variants[key] = self._shared(key) if self._store is not None else self._render(key)
        return self._variants[key]

    def _render(self, key: tuple[tuple[str, ...], str]) -> RenderedVariant | None:
        regions, language = key
        selection = self.selection(regions)
        if selection.is_empty:
            return None
        return render_variant(selection=selection, window=self._window, edition_key=self._edition_key,
                              settings=self._settings, sections=self._sections, clicks=self._clicks,
                              language=language)

    def _shared(self, key: tuple[tuple[str, ...], str]) -> RenderedVariant | None:
        store = self._store
        if store.claim(*key):
            started = time.perf_counter()
            try:
                variant = self._render(key)
            except BaseException:
                # Others would wait out their whole wait for a render that is not coming.
                store.release(*key)
                raise
            store.save(*key, variant)
            log.info("rendered variant %s (%s) of %s in %.0f ms", "-".join(key[0]), key[1], self._edition_key,
                     (time.perf_counter() - started) * 1000)
            return variant
        found = store.wait(*key)
        if found is Stored.MISSING:  # whoever claimed it died before saving
            return self._render(key)
        return None if found is Stored.EMPTY else found
