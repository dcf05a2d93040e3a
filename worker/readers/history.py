"""Every change to a subscriber, with when and how: made in one place, read in one place.

`change_status` is the one way a reader's status changes, wherever the change comes from
(import, CLI, the readers' pages, the operator, a late bounce or complaint, the relay's
refusal at send): it writes each reader's event in the same transaction, so the
history cannot miss a change. `apply_change` is how a loaded subscriber's status (through
`change_status`), regions, name or zone change, recording what it changed.
`subscriber_record` reads a subscriber back with their history and their rows in the
ledger: what `newsletter subscribers show` and `export` print.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, insert, select, update
from sqlalchemy.orm import Session

from worker.operators.actor import current_by
from worker.store.db import session_scope
from worker.store.models import (
    BounceEvent,
    ChangeVia,
    Delivery,
    Edition,
    EventKind,
    Subscriber,
    SubscriberEvent,
    SubscriberStatus,
)

MAX_NOTE = 1000
BY_A_PERSON = frozenset({ChangeVia.CLI, ChangeVia.IMPORT, ChangeVia.OPERATOR_PAGE})
# A missing name argument keeps the stored name; None removes it.
KEEP: Any = object()

_INTO = {
    SubscriberStatus.UNSUBSCRIBED: EventKind.UNSUBSCRIBED,
    SubscriberStatus.BOUNCED: EventKind.BOUNCED,
    SubscriberStatus.COMPLAINED: EventKind.COMPLAINED,
}


def status_event(before: str, after: SubscriberStatus, via: ChangeVia) -> EventKind:
    """The kind of a status change: how someone became active, or how they left."""
    if after is SubscriberStatus.ACTIVE:
        if before == SubscriberStatus.PENDING:
            return EventKind.CONFIRMED if via is ChangeVia.CONFIRM_LINK else EventKind.SUBSCRIBED
        return EventKind.REACTIVATED
    return _INTO.get(after, EventKind.UNSUBSCRIBED)


def record(session: Session, row: Subscriber, kind: EventKind, via: ChangeVia, *, at: datetime,
           note: str | None = None) -> None:
    """One event, with the status and regions the subscriber has now (flushed rows only)."""
    session.add(SubscriberEvent(subscriber_id=row.id, at=at, kind=kind.value, via=via.value, status=row.status,
                                regions=row.regions, note=_clip(note), by=_by(via)))


def change_status(db: Session | Connection, subscriber_ids: Iterable[int], status: SubscriberStatus, *,
                  was: SubscriberStatus, via: ChangeVia, at: datetime,
                  note: str | Mapping[int, str] | None = None) -> list[int]:
    """Those of the readers whose status is `was` get `status`, each with its event, in the
    caller's transaction; the ids that changed (a reader whose status is no longer `was`
    is left as it is). A note is one for all, or one per id.

    Two statements however many readers: an UPDATE ... RETURNING and one INSERT of the
    events. The ledger passes a batch's refusals at send here, on its hot path."""
    ids = sorted(set(subscriber_ids))
    if status == was or not ids:
        return []
    changed = sorted(db.execute(
        update(Subscriber).where(Subscriber.id.in_(ids), Subscriber.status == was.value)
        .values(status=status.value, status_changed_at=at)
        .returning(Subscriber.id, Subscriber.regions)
    ).all())  # RETURNING's order is the database's: the events go in by id
    if changed:
        kind = status_event(was, status, via)
        by = _by(via)
        db.execute(insert(SubscriberEvent.__table__), [
            {"subscriber_id": subscriber_id, "at": at, "kind": kind.value, "via": via.value, "status": status.value,
             "regions": regions, "note": _clip(note.get(subscriber_id) if isinstance(note, Mapping) else note),
             "by": by}
            for subscriber_id, regions in changed])
    return [subscriber_id for subscriber_id, _ in changed]


def apply_change(session: Session, row: Subscriber, *, via: ChangeVia, at: datetime,
                 status: SubscriberStatus | None = None, regions: tuple[str, ...] | None = None,
                 name: str | None = KEEP, timezone: str | None = KEEP, language: str | None = KEEP,
                 note: str | None = None) -> list[EventKind]:
    """Change what differs and record it: a status change as one event that also shows the
    new regions, else a regions change; then a name change (without the name) and a zone
    change (the zone is on the row), except the name and zone a sign-up brings when it is
    confirmed."""
    was = SubscriberStatus(row.status)
    regions_changed = regions is not None and " ".join(regions) != row.regions
    if regions_changed:
        row.regions = " ".join(regions)
    # Recorded here; a status change's event is written by change_status, before these.
    recorded: list[EventKind] = []
    if name is not KEEP and name != row.name:
        row.name = name
        if was is not SubscriberStatus.PENDING:  # a sign-up's name arrives with its confirmation
            recorded.append(EventKind.NAME_CHANGED)
    if timezone is not KEEP and timezone != row.timezone:
        row.timezone = timezone
        if was is not SubscriberStatus.PENDING:
            recorded.append(EventKind.ZONE_CHANGED)
    language_changed = language is not KEEP and language != row.language
    if language_changed:
        row.language = language
    # Its UPDATE flushes the new regions first, so the status event shows them.
    if status is not None and change_status(session, [row.id], status, was=was, via=via, at=at, note=note):
        kinds = [status_event(was, status, via)]
    else:
        kinds = []
        if regions_changed:
            recorded.insert(0, EventKind.REGIONS_CHANGED)
    for kind in recorded:
        record(session, row, kind, via, at=at, note=note)
    if language_changed and was is not SubscriberStatus.PENDING:
        # The note says which: a language is not personal, and the history shows what changed.
        record(session, row, EventKind.LANGUAGE_CHANGED, via, at=at, note=language or "the list's own")
        recorded.append(EventKind.LANGUAGE_CHANGED)
    return kinds + recorded


def subscriber_record(engine: Engine, email_key: str, *, deliveries: int | None = None) -> dict | None:
    """What we hold about one address: the row, its history and its ledger rows (the
    newest `deliveries` of them, or all), as plain JSON-able values; None if unknown."""
    with session_scope(engine) as session:
        row = session.scalar(select(Subscriber).where(Subscriber.email_key == email_key))
        if row is None:
            return None
        events = session.scalars(select(SubscriberEvent).where(SubscriberEvent.subscriber_id == row.id)
                                 .order_by(SubscriberEvent.at, SubscriberEvent.id)).all()
        query = (select(Delivery, Edition.key, Edition.created_at).join(Edition, Edition.id == Delivery.edition_id)
                 .where(Delivery.subscriber_id == row.id).order_by(Delivery.id.desc()))
        ledger = session.execute(query.limit(deliveries) if deliveries else query).all()
        late = session.execute(
            select(BounceEvent, Edition.key).outerjoin(Edition, Edition.id == BounceEvent.edition_id)
            .where(BounceEvent.subscriber_id == row.id).order_by(BounceEvent.id.desc()).limit(deliveries or 1000)).all()
    history = [_event(e) for e in events]
    rows = [_delivery(d, key, planned) for d, key, planned in ledger]
    return {
        "email": row.email,
        "name": row.name,
        "status": row.status,
        "status_changed_at": _when(row.status_changed_at),
        "regions": row.region_list,
        # None: NEWSLETTER_LANGUAGE.
        "language": row.language,
        "created_at": _when(row.created_at),
        "updated_at": _when(row.updated_at),
        "confirmation": None if row.confirm_sent_at is None else {
            "mailed_at": _when(row.confirm_sent_at),
            "regions": (row.confirm_regions or "").split(),
            "name": row.confirm_name,
            "live": row.confirm_nonce is not None,
        },
        "history": history,
        "deliveries": rows,
        # Bounces and complaints heard after the relay accepted a message, with their reason.
        "late_reports": [{"at": _when(e.received_at), "edition": key, "kind": e.kind, "reason": e.reason,
                          "code": e.code, "source": e.source} for e, key in late],
    }


def _event(event: SubscriberEvent) -> dict:
    return {"at": _when(event.at), "kind": event.kind, "via": event.via, "status": event.status,
            "regions": event.regions.split(), "note": event.note, "by": event.by}


def _delivery(row: Delivery, edition_key: str, planned: datetime) -> dict:
    return {"edition": edition_key, "planned_at": _when(planned), "regions": row.regions.split(),
            "state": row.state, "skip_reason": row.skip_reason, "attempts": row.attempts,
            "sent_at": _when(row.sent_at), "message_id": row.message_id, "last_code": row.last_code,
            "last_reply": row.last_reply, "updated_at": _when(row.updated_at)}


def _by(via: ChangeVia) -> str | None:
    """Who, for a change a person made for the reader; a change by the reader, a mail server
    or the worker names nobody (an operator's `send --inline` does not refuse addresses)."""
    return current_by() if via in BY_A_PERSON else None


def _clip(note: str | None) -> str | None:
    return note[:MAX_NOTE] if note else None


def _when(moment: datetime | None) -> str | None:
    return moment.isoformat(timespec="seconds") if moment else None
