"""Deciding `unknown` rows: the ledger's one ambiguous case (the server may have accepted
the message before the worker died or the connection dropped) is reported and never
re-sent on its own. An operator who knows better says so here: `sent` (it arrived: the
row counts as sent) or `resend` (it did not: the row goes back to pending and out again,
through the same claim as any other row, so an unsubscribe since still wins). Each
decision stays on the row with who made it and when (deliveries.resolution,
resolved_by, resolved_at), whatever the row does next.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from sqlalchemy import Engine, select, update

from worker.delivery.tallies import forget
from worker.operators.audit import audit
from worker.store.db import session_scope
from worker.store.models import Delivery, DeliveryState, Edition, EditionState, Subscriber

D = Delivery.__table__


class Resolution(StrEnum):
    SENT = "sent"
    RESEND = "resend"


@dataclass
class Resolved:
    changed: int = 0
    # Addresses asked for that have no unknown row in the edition: address -> its row's state, or None.
    not_unknown: dict[str, str | None] = field(default_factory=dict)
    reopened: bool = False  # a done edition sends again (a resend)


def resolve_unknown(engine: Engine, edition_id: int, *, resolution: Resolution, keys: list[str] | None,
                    who: str, now: datetime) -> Resolved:
    """Decide the edition's `unknown` rows of the subscribers whose address keys are `keys`
    (None: all of them). A compare-and-set on `state = unknown`: a row decided twice, or
    by two operators at once, is decided once."""
    out = Resolved()
    values: dict = {"resolution": resolution.value, "resolved_by": who[:120], "resolved_at": now, "updated_at": now}
    if resolution is Resolution.SENT:
        values["state"] = DeliveryState.SENT.value
    else:
        values.update(state=DeliveryState.PENDING.value, attempts=0, next_attempt_at=None, claimed_by=None,
                      lease_until=None, enqueued_at=None, due_at=None)
    with session_scope(engine) as session:
        query = update(D).where(D.c.edition_id == edition_id, D.c.state == DeliveryState.UNKNOWN.value)
        if keys is not None:
            states = dict(session.execute(
                select(Subscriber.email_key, D.c.state).join(D, D.c.subscriber_id == Subscriber.id)
                .where(D.c.edition_id == edition_id, Subscriber.email_key.in_(keys))).all())
            out.not_unknown = {key: states.get(key) for key in keys
                               if states.get(key) != DeliveryState.UNKNOWN.value}
            wanted = select(Subscriber.id).where(Subscriber.email_key.in_(keys))
            query = query.where(D.c.subscriber_id.in_(wanted.scalar_subquery()))
        out.changed = session.execute(query.values(**values)).rowcount or 0
        if out.changed:
            forget(session, [edition_id])
        if resolution is Resolution.RESEND and out.changed:
            out.reopened = bool(session.execute(
                update(Edition).where(Edition.id == edition_id, Edition.state == EditionState.DONE.value)
                .values(state=EditionState.SENDING.value, finished_at=None)).rowcount)
        if out.changed:
            audit(session, "unknown-resolved", f"edition {edition_id}", f"{out.changed} rows {resolution.value}")
    return out


def resolution_counts(engine: Engine, edition_id: int) -> dict:
    """How the edition's unknown rows were decided: counts by resolution, and the last
    decision's who and when."""
    with session_scope(engine) as session:
        rows = session.execute(select(D.c.resolution, D.c.resolved_by, D.c.resolved_at)
                               .where(D.c.edition_id == edition_id, D.c.resolution.is_not(None))
                               .order_by(D.c.resolved_at)).all()
    counts = {r.value: 0 for r in Resolution}
    for resolution, _, _ in rows:
        counts[resolution] = counts.get(resolution, 0) + 1
    last = rows[-1] if rows else None
    return {**counts, "last_by": last.resolved_by if last else None,
            "last_at": last.resolved_at.isoformat() if last else None}
