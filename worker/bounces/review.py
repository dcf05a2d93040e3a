"""Reports of ours whose reason could not be read, kept for the operator: listed by
`newsletter bounces review`, decided with `--permanent ID` or `--ignore ID` (apply.decide)."""

from __future__ import annotations

from sqlalchemy import Engine, select

from worker.store.db import session_scope
from worker.store.models import BounceEvent, BounceKind, Edition, Subscriber

MAX_LISTED = 200


def waiting(engine: Engine, *, limit: int = MAX_LISTED) -> list[dict]:
    """The oldest reports waiting for a decision, with the reader and the server's words."""
    with session_scope(engine) as session:
        rows = session.execute(
            select(BounceEvent, Edition.key, Subscriber.email)
            .outerjoin(Edition, Edition.id == BounceEvent.edition_id)
            .outerjoin(Subscriber, Subscriber.id == BounceEvent.subscriber_id)
            .where(BounceEvent.kind == BounceKind.REVIEW.value).order_by(BounceEvent.id).limit(limit)).all()
        return [{"id": event.id, "received_at": event.received_at.isoformat(timespec="seconds"), "edition": key,
                 "reader": email, "recipient": event.recipient, "source": event.source, "code": event.code,
                 "diagnostic": event.diagnostic} for event, key, email in rows]
