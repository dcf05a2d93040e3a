"""Rendered variants shared by every worker process through the database.

A process that needs a region set nobody rendered yet claims it (a row with
no HTML, unique per edition and region set), renders it and fills it in;
others wait for the row to fill. So premailer runs once per (edition,
region set) across all workers, and "view online" shows what was sent.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Literal

from sqlalchemy import Engine, select, update

from worker.render.digest import RenderedVariant
from worker.store.db import session_scope
from worker.store.models import Variant

MISSING: Literal["missing"] = "missing"
EMPTY: Literal["empty"] = "empty"  # rendered before, and the selection was empty


def _insert(engine: Engine):
    if engine.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return insert


class VariantStore:
    def __init__(self, engine: Engine, *, edition_id: int, edition_key: str, wait_seconds: float = 60.0) -> None:
        self.engine = engine
        self.edition_id = edition_id
        self.edition_key = edition_key
        self.wait_seconds = wait_seconds

    def get(self, regions: tuple[str, ...]) -> RenderedVariant | str:
        with session_scope(self.engine) as session:
            row = session.execute(
                select(Variant.subject, Variant.html, Variant.text, Variant.story_count)
                .where(Variant.edition_id == self.edition_id, Variant.regions == " ".join(regions))
            ).first()
        if row is None:
            return MISSING
        if row.html is None:
            return "rendering"
        if row.story_count == 0:
            return EMPTY
        return RenderedVariant(edition_key=self.edition_key, regions=regions, subject=row.subject,
                               html=row.html, text=row.text, story_count=row.story_count)

    def claim(self, regions: tuple[str, ...]) -> bool:
        """True if this process is now the one to render it."""
        insert = _insert(self.engine)
        table = Variant.__table__
        with session_scope(self.engine) as session:
            # RETURNING, not rowcount: an ORM-level insert may report -1 for "unknown".
            won = session.execute(
                insert(table).values(edition_id=self.edition_id, regions=" ".join(regions), story_count=0,
                                     created_at=datetime.now(UTC))
                .on_conflict_do_nothing(index_elements=["edition_id", "regions"])
                .returning(table.c.id)
            ).first()
            return won is not None

    def wait(self, regions: tuple[str, ...]) -> RenderedVariant | str:
        deadline = time.monotonic() + self.wait_seconds
        while time.monotonic() < deadline:
            found = self.get(regions)
            if found != "rendering":
                return found
            time.sleep(0.05)
        return MISSING  # the renderer died: render here without storing

    def save(self, regions: tuple[str, ...], variant: RenderedVariant | None) -> None:
        with session_scope(self.engine) as session:
            session.execute(
                update(Variant).where(Variant.edition_id == self.edition_id, Variant.regions == " ".join(regions))
                .values(subject=variant.subject if variant else "", html=variant.html if variant else "",
                        text=variant.text if variant else "", story_count=variant.story_count if variant else 0)
            )
