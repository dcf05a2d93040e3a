"""Test data helpers: stories for a week, subscribers in bulk, a week sent and its mail read back."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from email import policy
from email.parser import BytesParser
from pathlib import Path

import sqlalchemy as sa

from worker.ingest import import_sources
from worker.store.db import session_scope
from worker.store.models import Delivery, Edition, Subscriber

REGION_SETS = [("RU", "UA"), ("UA", "RU"), ("DE", "FR", "GB"), ("US",), ("CN", "RU"), ("PL", "UA", "DE"),
               ("FR",), ("JP",)]


def load_stories(engine, tmp_path: Path, week_days=("2025-01-28", "2025-01-30")) -> None:
    """Two stories per region in 2025-W05 for every region above except JP."""
    items = []
    for region in ["RU", "UA", "DE", "FR", "GB", "US", "CN", "PL"]:
        for n, day in enumerate(week_days):
            items.append({"id": f"{region}-{n}", "url": f"https://news.example/{region}/{n}",
                          "title": f"{region} story {n}", "summary": f"About {region}, part {n}.",
                          "regions": [region], "published_at": f"{day}T10:00:00Z", "source": "wire"})
    path = tmp_path / "stories.json"
    path.write_text(json.dumps(items))
    assert not import_sources(engine, [str(path)]).rejected


def add_subscribers(engine, count: int, sets=REGION_SETS, prefix="reader") -> list[tuple[int, str, str]]:
    """(id, email, regions) for `count` active subscribers spread over `sets`."""
    with session_scope(engine) as session:
        rows = [Subscriber(email=f"{prefix}{n}@example.org", email_key=f"{prefix}{n}@example.org",
                           name=f"Reader {n}", regions=" ".join(sets[n % len(sets)]), status="active")
                for n in range(count)]
        session.add_all(rows)
        session.flush()
        return [(r.id, r.email, r.regions) for r in rows]


def ledger(engine, key: str) -> dict[str, tuple[str, str | None]]:
    """email -> (state, skip_reason) for an edition."""
    with session_scope(engine) as session:
        rows = session.execute(
            sa.select(Subscriber.email, Delivery.state, Delivery.skip_reason)
            .join(Delivery, Delivery.subscriber_id == Subscriber.id)
            .join(Edition, Edition.id == Delivery.edition_id).where(Edition.key == key)
        ).all()
    return {r.email: (r.state, r.skip_reason) for r in rows}


def delivery_rows(engine, key: str) -> dict[str, Delivery]:
    with session_scope(engine) as session:
        rows = session.execute(
            sa.select(Subscriber.email, Delivery)
            .join(Delivery, Delivery.subscriber_id == Subscriber.id)
            .join(Edition, Edition.id == Delivery.edition_id).where(Edition.key == key)
        ).all()
    return {email: d for email, d in rows}


def send_week(engine, settings, key: str = "weekly-2025-W05", week: str = "2025-W05") -> int:
    """A real sent edition: planned (a quiet week as the settings say) and delivered
    in-process through the settings' backend; its id."""
    from worker.delivery import pipeline
    from worker.delivery.pipeline import run_inline
    from worker.delivery.plan import plan_edition
    from worker.delivery.senders import make_sender
    from worker.digest import week_window

    # Renderers are kept per process by edition id, and every test database starts at 1.
    pipeline._RENDERERS.clear()
    planned = plan_edition(engine, key=key, kind="weekly", window=week_window(week, settings.tz),
                           now=datetime(2025, 2, 3, 7, 0, tzinfo=UTC), wider=settings.wider)
    run_inline(engine, settings, planned.edition_id, make_sender(settings))
    return planned.edition_id


def outbox_message(settings, email: str, *, required: bool = True):
    """The message the file backend wrote to `email`; None (or a failure, if required) when none."""
    for path in Path(settings.outbox_dir).glob("*.eml"):
        message = BytesParser(policy=policy.default).parsebytes(path.read_bytes())
        if message["To"].addresses[0].addr_spec == email:
            return message
    if required:
        raise AssertionError(f"no message to {email}")
    return None
