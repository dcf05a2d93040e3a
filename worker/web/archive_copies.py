"""Which stored copies of sent editions the archive lists, read with bounded queries.

A copy of one region is listed always. A copy of several regions is listed only once at
least MIN_READERS readers received it: a rare combination of regions can point at one
person. Unlisted copies stay reachable by the "View online" link of the mails that carried
them. Only the columns a listing needs are read; a copy's HTML only for the feed's entries.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Engine, and_, exists, func, literal, select

from worker.digest import RegionSet
from worker.store.models import Delivery, DeliveryState, Edition, EditionState, Story, StoryRegion, Variant

E, V, D = Edition.__table__, Variant.__table__, Delivery.__table__

MIN_READERS = 5
# Not held (not approved) or skipped (discarded): those were never mailed. A paused edition's
# stored copies are what it mailed, or will once resumed.
SHOWN_STATES = (EditionState.DONE.value, EditionState.SENDING.value, EditionState.PAUSED.value)
# NULL html: still rendering; no stories: rendered empty, never sent.
_STORED = and_(V.c.html.is_not(None), V.c.story_count > 0)
_SHOWN = and_(E.c.state.in_(SHOWN_STATES), exists().where(V.c.edition_id == E.c.id, _STORED))


@dataclass(frozen=True)
class ArchivedEdition:
    id: int
    key: str
    label: str
    window_start: datetime
    window_end: datetime
    state: str
    finished_at: datetime | None


@dataclass(frozen=True)
class Copy:
    """One listed stored copy: a variant of an edition."""

    variant_id: int
    edition_id: int
    regions: tuple[str, ...]
    created_at: datetime
    # Readers it was sent to; only counted for copies of several regions (0 for one region).
    readers: int

    @property
    def key(self) -> str:
        return RegionSet(self.regions).key


class ReceivedCounts:
    """How many readers received each copy of several regions, counted from the ledger.

    Counting reads every ledger row of an edition, so a finished edition's counts are kept
    per process (they no longer change until it sends again, which clears finished_at);
    an edition still sending is counted again at most every LIVE_SECONDS, so a flood of
    archive requests during a large send does not scan its ledger each time."""

    KEEP = 64
    LIVE_SECONDS = 30

    def __init__(self) -> None:
        self._finished: OrderedDict[tuple[int, datetime], dict[str, int]] = OrderedDict()
        self._live: dict[int, tuple[float, dict[str, int]]] = {}
        self._lock = threading.Lock()

    def of(self, engine: Engine, editions: list[ArchivedEdition]) -> dict[int, dict[str, int]]:
        """edition id -> {stored regions text: readers} for the copies of several regions
        that at least MIN_READERS readers received."""
        found, missing = {}, []
        now = time.monotonic()
        with self._lock:
            for edition in editions:
                kept = self._finished.get(self._key(edition))
                live = self._live.get(edition.id)
                if kept is None and live is not None and live[0] > now:
                    kept = live[1]
                if kept is None:
                    missing.append(edition)
                else:
                    found[edition.id] = kept
        counted = _count_listed(engine, [e.id for e in missing]) if missing else {}
        with self._lock:
            for edition in missing:
                found[edition.id] = counted.get(edition.id, {})
                if edition.state == EditionState.DONE.value and edition.finished_at is not None:
                    self._finished[self._key(edition)] = found[edition.id]
                    while len(self._finished) > self.KEEP:
                        self._finished.popitem(last=False)
                else:
                    if len(self._live) >= self.KEEP:
                        self._live.clear()
                    self._live[edition.id] = (now + self.LIVE_SECONDS, found[edition.id])
        return found

    @staticmethod
    def _key(edition: ArchivedEdition) -> tuple[int, datetime | None]:
        return edition.id, edition.finished_at


def _count_listed(engine: Engine, edition_ids: list[int]) -> dict[int, dict[str, int]]:
    readers = func.count()
    query = (select(D.c.edition_id, D.c.regions, readers)
             .where(D.c.edition_id.in_(edition_ids), D.c.state == DeliveryState.SENT.value,
                    D.c.regions.contains(" "))
             .group_by(D.c.edition_id, D.c.regions).having(readers >= MIN_READERS))
    counts: dict[int, dict[str, int]] = {}
    with engine.connect() as conn:
        for edition_id, regions, count in conn.execute(query):
            counts.setdefault(edition_id, {})[regions] = count
    return counts


def _editions(conn, query) -> list[ArchivedEdition]:
    rows = conn.execute(select(E.c.id, E.c.key, E.c.label, E.c.window_start, E.c.window_end, E.c.state,
                               E.c.finished_at).where(query).order_by(E.c.id.desc()))
    return [ArchivedEdition(*row) for row in rows]


def _copies(conn, editions: list[ArchivedEdition], listed: dict[int, dict[str, int]], *,
            language: str, region: str | None = None) -> list[Copy]:
    """The listed stored copies of `editions` in `language` (those carrying `region` when given)."""
    ids = [e.id for e in editions]
    several = sorted({text for sets in listed.values() for text in sets
                      if region is None or region in text.split()})
    single = V.c.regions == region if region else ~V.c.regions.contains(" ")
    rows = conn.execute(select(V.c.id, V.c.edition_id, V.c.regions, V.c.created_at)
                        .where(V.c.edition_id.in_(ids), _STORED, V.c.language == language,
                               single | V.c.regions.in_(several))
                        .order_by(V.c.edition_id.desc(), V.c.regions))
    told = _regions_with_news(conn, editions)
    copies = []
    for variant_id, edition_id, regions, created_at in rows:
        readers = listed.get(edition_id, {}).get(regions, 0)
        # A quiet week's copy (NEWSLETTER_QUIET_WEEK=wider) carried none of its regions' news,
        # and a region's feed has only the weeks with news of it.
        if not told[edition_id].intersection([region] if region else regions.split()):
            continue
        if " " not in regions or readers:
            copies.append(Copy(variant_id, edition_id, RegionSet.stored(regions).codes, created_at, readers))
    return copies


def _regions_with_news(conn, editions: list[ArchivedEdition]) -> dict[int, set[str]]:
    """edition id -> the regions that had a story in its window."""
    found = {}
    for edition in editions:
        found[edition.id] = set(conn.scalars(
            select(StoryRegion.region).distinct().join(Story, Story.id == StoryRegion.story_id)
            .where(Story.published_at >= edition.window_start, Story.published_at < edition.window_end)))
    return found


def archive_page(engine: Engine, counts: ReceivedCounts, *, page: int, per_page: int, language: str
                 ) -> tuple[list[tuple[ArchivedEdition, list[Copy]]], bool]:
    """One page of sent editions, newest first, each with its listed copies; and whether an
    older page follows. An edition none of whose copies may be listed is left out."""
    with engine.connect() as conn:
        editions = _editions(conn, E.c.id.in_(
            select(E.c.id).where(_SHOWN).order_by(E.c.id.desc()).limit(per_page + 1)
            .offset((page - 1) * per_page).scalar_subquery()))
    more, editions = len(editions) > per_page, editions[:per_page]
    if not editions:
        return [], more
    listed = counts.of(engine, editions)
    with engine.connect() as conn:
        copies = _copies(conn, editions, listed, language=language)
    by_edition = {e.id: [] for e in editions}
    for copy in copies:
        by_edition[copy.edition_id].append(copy)
    return [(e, by_edition[e.id]) for e in editions if by_edition[e.id]], more


def region_copies(engine: Engine, counts: ReceivedCounts, region: str, *, limit: int, language: str
                  ) -> list[tuple[ArchivedEdition, Copy]]:
    """The latest `limit` sent editions that carried `region`, newest first, each with the
    copy to show for it: the region's own, else the listed copy with it that most readers
    received; an edition with neither is left out."""
    carries = (literal(" ") + V.c.regions + literal(" ")).contains(f" {region} ")
    with engine.connect() as conn:
        editions = _editions(conn, E.c.id.in_(
            select(E.c.id).where(E.c.state.in_(SHOWN_STATES),
                                 exists().where(V.c.edition_id == E.c.id, _STORED, carries))
            .order_by(E.c.id.desc()).limit(limit).scalar_subquery()))
    if not editions:
        return []
    listed = counts.of(engine, editions)
    with engine.connect() as conn:
        copies = _copies(conn, editions, listed, language=language, region=region)
    by_edition: dict[int, list[Copy]] = {}
    for copy in copies:
        by_edition.setdefault(copy.edition_id, []).append(copy)
    return [(e, max(by_edition[e.id], key=lambda c: (c.regions == (region,), c.readers)))
            for e in editions if e.id in by_edition]


def copy_pages(engine: Engine, variant_ids: list[int]) -> dict[int, str]:
    """The whole stored HTML of these copies (the archive's, when the mail was shortened)."""
    if not variant_ids:
        return {}
    with engine.connect() as conn:
        return dict(conn.execute(select(V.c.id, func.coalesce(V.c.online_html, V.c.html))
                                 .where(V.c.id.in_(variant_ids))).all())
