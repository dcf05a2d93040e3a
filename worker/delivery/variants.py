"""Rendered variants shared by every worker process through the database.

A process that needs a region set nobody rendered yet claims it (a row with
no HTML, unique per edition and region set), renders it and fills it in;
others wait for the row to fill. So premailer runs once per (edition,
region set) across all workers, and "view online" shows what was sent.
"""

from __future__ import annotations

import time

from sqlalchemy import Engine, and_, delete, select, update

from worker.clock import utcnow
from worker.digest import RegionSet
from worker.render.cache import Stored
from worker.render.digest import RenderedVariant
from worker.store.db import upsert_insert
from worker.store.models import Variant

V = Variant.__table__


class VariantStore:
    """Single statements, autocommitted: a variant costs its renderer two statements
    (claim, save) and every other process one read, with no BEGIN and COMMIT around them."""

    def __init__(self, engine: Engine, *, edition_id: int, edition_key: str, wait_seconds: float = 60.0) -> None:
        self.engine = engine
        self.edition_id = edition_id
        self.edition_key = edition_key
        self.wait_seconds = wait_seconds
        # The instants this process's claims were tried with: each names its claim, so a
        # claim whose reply the database never sent (it went down in between) is known as
        # ours on a later try, instead of waited for as somebody else's render.
        self._tried: dict[tuple[str, ...], list] = {}

    def _connect(self):
        return self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")

    def _row(self, regions: tuple[str, ...], language: str):
        return and_(V.c.edition_id == self.edition_id, V.c.regions == RegionSet(regions).text,
                    V.c.language == language)

    def get(self, regions: tuple[str, ...], language: str) -> RenderedVariant | Stored:
        with self._connect() as conn:
            row = conn.execute(select(V.c.subject, V.c.html, V.c.text, V.c.story_count, V.c.marker,
                                      V.c.online_html).where(self._row(regions, language))).first()
        if row is None:
            return Stored.MISSING
        if row.html is None:
            return Stored.RENDERING
        if row.story_count == 0:
            return Stored.EMPTY
        return RenderedVariant(edition_key=self.edition_key, regions=regions, subject=row.subject,
                               html=row.html, text=row.text, story_count=row.story_count,
                               # NULL: stored by a version whose markers had no nonce.
                               nonce=row.marker or "", online_html=row.online_html, language=language)

    def claim(self, regions: tuple[str, ...], language: str) -> bool:
        """True if this process is now the one to render it: it wrote the claim now, or an
        earlier try of it did (its reply was lost) and nothing was saved since."""
        insert = upsert_insert(self.engine)
        tried = self._tried.setdefault((regions, language), [])
        earlier = list(tried)
        at = utcnow()
        tried.append(at)
        with self._connect() as conn:
            # RETURNING, not rowcount: an ORM-level insert may report -1 for "unknown".
            won = conn.execute(
                insert(V).values(edition_id=self.edition_id, regions=RegionSet(regions).text, story_count=0,
                                 created_at=at, language=language)
                .on_conflict_do_nothing(index_elements=["edition_id", "regions", "language"])
                .returning(V.c.id)
            ).first()
            if won is not None or not earlier:
                return won is not None
            return conn.execute(select(V.c.id).where(self._row(regions, language), V.c.created_at.in_(earlier),
                                                     V.c.html.is_(None))).first() is not None

    def wait(self, regions: tuple[str, ...], language: str) -> RenderedVariant | Stored:
        """The stored variant, once its renderer has saved it; MISSING if nobody claimed it
        or the renderer did not save it in time (it died: render here without storing)."""
        deadline = time.monotonic() + self.wait_seconds
        while True:
            found = self.get(regions, language)
            if found is not Stored.RENDERING:
                return found
            if time.monotonic() > deadline:
                return Stored.MISSING
            time.sleep(0.05)

    def release(self, regions: tuple[str, ...], language: str) -> None:
        """Give up a claim whose render failed: the next to ask claims it again."""
        with self._connect() as conn:
            conn.execute(delete(V).where(self._row(regions, language), V.c.html.is_(None)))

    def save(self, regions: tuple[str, ...], language: str, variant: RenderedVariant | None) -> None:
        with self._connect() as conn:
            conn.execute(
                update(V).where(self._row(regions, language))
                .values(subject=variant.subject if variant else "", html=variant.html if variant else "",
                        text=variant.text if variant else "", story_count=variant.story_count if variant else 0,
                        marker=variant.nonce if variant else "",
                        online_html=variant.online_html if variant else None)
            )
