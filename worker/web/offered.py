"""The regions sign-up and manage offer: NEWSLETTER_REGIONS, else the ones the site covers.

Offering all of ISO 3166's ~250 regions lets readers pick ones that never get a story.
Without NEWSLETTER_REGIONS, what the site covers is read from what it published: the
regions of stories of the last RECENT, and the regions the feeds are set up for (a new
site's first week). A site with neither yet offers every region, so its form still works.
Readers keep the regions they follow either way (manage lists them, leave links work).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime, timedelta

import pycountry
from sqlalchemy import Engine, select

from worker.clock import utcnow
from worker.settings import Settings
from worker.store.db import session_scope
from worker.store.models import Source, Story, StoryRegion

RECENT = timedelta(weeks=8)
# The sign-up page is public: at most one query of the stories per process this often.
CACHE_SECONDS = 300.0


def covered_regions(engine: Engine, settings: Settings, now: datetime) -> frozenset[str]:
    """Regions with a story in the last RECENT or a feed of their own."""
    with session_scope(engine) as session:
        recent = session.scalars(select(StoryRegion.region).join(Story)
                                 .where(Story.published_at >= now - RECENT).distinct()).all()
        feeds = session.scalars(select(Source.region).where(Source.region.is_not(None)).distinct()).all()
    configured = (source["region"] for source in settings.sources if source.get("region"))
    return frozenset({*recent, *feeds, *configured})


def offered_regions(engine: Engine, settings: Settings) -> Callable[[], frozenset[str]]:
    """A function giving the codes offered now (cached for CACHE_SECONDS)."""
    if settings.regions:
        fixed = frozenset(settings.regions)
        return lambda: fixed
    cache: dict[str, object] = {"due": 0.0, "codes": frozenset()}

    def offered() -> frozenset[str]:
        if time.monotonic() >= cache["due"]:
            codes = covered_regions(engine, settings, utcnow())
            cache["codes"] = codes or frozenset(c.alpha_2 for c in pycountry.countries)
            cache["due"] = time.monotonic() + CACHE_SECONDS
        return cache["codes"]  # type: ignore[return-value]

    return offered
