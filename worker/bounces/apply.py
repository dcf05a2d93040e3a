"""What a report does: the one function every input (mailbox, provider event) ends in.

- permanent: the delivery becomes `bounced` (the code and diagnostic in its last reply)
  and an active subscriber `bounced`, with a `bounced` event;
- transient: counted once per edition in `subscribers.transient_bounces`, the run of
  consecutive editions sent to them that each drew a temporary failure; an edition
  sent to them without one breaks the run (the count starts again from the next
  report). At NEWSLETTER_BOUNCE_TRANSIENT_LIMIT the subscriber is `bounced`;
- complaint: the subscriber `complained` (also from unsubscribed or bounced: the
  strongest suppression, which no import and no sign-up undoes; docs/bounces.md);
- sender (a reason about us: our address, content, reputation, authentication, rate;
  worker/bounces/reasons.py): recorded and shown by `status`, nothing else: the reader is
  not to blame, and the edition was sent already;
- review (ours, but its reason cannot be read): recorded and listed by `newsletter
  bounces review` for the operator, who makes it permanent or dismisses it (`decide`).

Each report is one `bounce_events` row, unique by its fingerprint, written in the same
transaction as what it changes: the same report twice changes nothing (a concurrent
second insert waits for the first, then fails on the unique key). A report that
matches no delivery of ours changes nothing and is not stored.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum

from sqlalchemy import Engine, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from worker import metrics
from worker.bounces.reports import Report
from worker.delivery.tallies import forget
from worker.operators.audit import audit
from worker.readers.history import apply_change
from worker.readers.signup import confirmation_returned
from worker.readers.subscribers import InvalidSubscriber, check_address
from worker.store.db import session_scope
from worker.store.models import (
    BounceEvent,
    BounceKind,
    ChangeVia,
    Delivery,
    DeliveryState,
    Edition,
    Subscriber,
    SubscriberStatus,
)

log = logging.getLogger(__name__)

# Without our VERP tag a report is matched by Message-ID or address among the latest
# editions only: each is an index range, and a report about an older edition is stale.
RECENT_EDITIONS = 8
# Rows a relay accepted: what a late report can be about.
ACCEPTED = (DeliveryState.SENT.value, DeliveryState.UNKNOWN.value, DeliveryState.BOUNCED.value)
_UNVERIFIED = object()  # _match's answer for an address it may not go by


class Applied(StrEnum):
    APPLIED = "applied"       # recorded, and acted on
    DUPLICATE = "duplicate"   # processed before: nothing changed
    UNMATCHED = "unmatched"   # about no delivery of ours: logged and ignored
    UNVERIFIED = "unverified"  # only an address, in mail while VERP is on: not believed


@dataclass(frozen=True)
class Target:
    """What a report is about, found as apply_report finds it: `applied` is APPLIED when
    the report would be acted on, else why not."""
    applied: Applied
    delivery: Delivery | None = None
    subscriber: Subscriber | None = None  # the delivery's reader, or the sign-up's

    @property
    def delivery_id(self) -> int | None:
        return self.delivery.id if self.delivery is not None else None


def find_target(session: Session, report: Report) -> Target:
    """Whether a report would be applied, and to what: a sign-up's live confirmation link
    (its own tag), else a delivery of ours (_match). The rows found are locked."""
    if report.delivery_id is None and report.signup is not None:
        subscriber = session.get(Subscriber, report.signup.subscriber_id, with_for_update=True)
        if subscriber is None or not report.signup.names(subscriber.confirm_nonce):
            # A report about a link since confirmed, replaced or cancelled is about a request that is over.
            return Target(Applied.UNMATCHED)
        return Target(Applied.APPLIED, subscriber=subscriber)
    delivery = _match(session, report)
    if delivery is None:
        return Target(Applied.UNMATCHED)
    if delivery is _UNVERIFIED:
        return Target(Applied.UNVERIFIED)
    assert isinstance(delivery, Delivery)
    subscriber = session.get(Subscriber, delivery.subscriber_id, with_for_update=True)
    if report.kind is BounceKind.REVIEW and _has_event(session, delivery.id, None):
        # One report per delivery waits for a human; more (or one after a readable
        # report) would only lengthen the list, and whoever holds a tag could post many.
        return Target(Applied.DUPLICATE, delivery, subscriber)
    return Target(Applied.APPLIED, delivery, subscriber)


def would_apply(engine: Engine, report: Report) -> Target:
    """What apply_report would do with the report, changing nothing (a dry run)."""
    with session_scope(engine) as session:
        target = find_target(session, report)
        seen = session.scalar(select(BounceEvent.id).where(BounceEvent.fingerprint == report.fingerprint))
        if target.applied is Applied.APPLIED and seen is not None:
            target = replace(target, applied=Applied.DUPLICATE)
        session.expunge_all()
        return target


def apply_report(engine: Engine, report: Report, *, transient_limit: int, now: datetime) -> Applied:
    try:
        with session_scope(engine) as session:
            target = find_target(session, report)
            if target.applied is Applied.UNMATCHED:
                log.info("%s report (%s) matches no delivery or live confirmation link of ours; ignored",
                         report.kind, report.source)
            elif target.applied is Applied.UNVERIFIED:
                log.info("%s report (%s) names an address but no tag or Message-ID of ours; not believed",
                         report.kind, report.source)
            if target.applied is not Applied.APPLIED:
                return target.applied
            assert target.subscriber is not None
            if target.delivery is None:
                _apply_signup(session, target.subscriber, report, now)
            else:
                _apply_delivery(session, target.delivery, target.subscriber, report, transient_limit, now)
    except IntegrityError:
        return Applied.DUPLICATE
    metrics.count_late_report(report.kind.value, report.source, report.reason)
    return Applied.APPLIED


def _apply_delivery(session: Session, delivery: Delivery, subscriber: Subscriber, report: Report,
                    transient_limit: int, now: datetime) -> None:
    first_for_delivery = not _has_event(session, delivery.id, report.kind)
    session.add(BounceEvent(fingerprint=report.fingerprint, kind=report.kind.value, source=report.source,
                            delivery_id=delivery.id, edition_id=delivery.edition_id,
                            subscriber_id=delivery.subscriber_id, recipient=report.recipient,
                            code=report.code, reason=report.reason, diagnostic=report.diagnostic,
                            received_at=now))
    session.flush()
    if report.kind is BounceKind.PERMANENT:
        _bounce(session, delivery, subscriber, report, now)
    elif report.kind is BounceKind.TRANSIENT:
        if first_for_delivery:
            _count_transient(session, delivery, subscriber, limit=transient_limit, now=now)
    elif report.kind is BounceKind.SENDER:
        log.warning("delivery %s refused for our side after the relay accepted it: %s (%s)", delivery.id,
                    report.code, report.reason)
    elif report.kind is BounceKind.REVIEW:
        log.warning("delivery %s: a report of ours whose reason cannot be read, kept for review",
                    delivery.id)
    elif subscriber.status != SubscriberStatus.COMPLAINED:
        apply_change(session, subscriber, via=ChangeVia.BOUNCE, at=now, status=SubscriberStatus.COMPLAINED,
                     note=f"complaint ({report.source})")


class NotForReview(LookupError):
    """No report kept for review has this id."""


def decide(engine: Engine, event_id: int, *, permanent: bool, now: datetime, who: str = "operator") -> BounceEvent:
    """The operator's decision on a report kept for review: permanent (the reader, or the
    sign-up whose confirmation mail it was, is bounced, as a permanent report would) or
    dismissed (nothing changes)."""
    with session_scope(engine) as session:
        event = session.get(BounceEvent, event_id, with_for_update=True)
        if event is None or event.kind != BounceKind.REVIEW.value:
            raise NotForReview(f"no report kept for review has id {event_id}")
        event.kind = (BounceKind.PERMANENT if permanent else BounceKind.DISMISSED).value
        if permanent and event.delivery_id is not None:
            delivery = session.get(Delivery, event.delivery_id, with_for_update=True)
            subscriber = session.get(Subscriber, delivery.subscriber_id, with_for_update=True)
            report = Report(kind=BounceKind.PERMANENT, source=event.source, recipient=event.recipient,
                            delivery_id=delivery.id, message_id=None, code=event.code, smtp_code=None,
                            diagnostic=event.diagnostic, fingerprint=event.fingerprint, reason=event.reason)
            _bounce(session, delivery, subscriber, report, now, note=f"reviewed by {who}: permanent")
        elif permanent and event.subscriber_id is not None:
            # About a sign-up's confirmation mail: the sign-up's answer to a permanent bounce.
            subscriber = session.get(Subscriber, event.subscriber_id, with_for_update=True)
            if subscriber is not None:
                confirmation_returned(session, subscriber, BounceKind.PERMANENT, now=now,
                                      note=f"confirmation mail reviewed by {who}: permanent")
        audit(session, "bounce-reviewed", f"report {event_id}", "permanent" if permanent else "dismissed")
        session.flush()
        session.expunge(event)
        return event


def _match(session: Session, report: Report) -> Delivery | object | None:
    """The delivery a report is about: by tag, by our Message-ID, then (where the address
    may be believed) the reader's latest accepted delivery; None for none of ours."""
    if report.delivery_id is not None:
        # A verified tag: ours, whatever address the report names (forwarding, aliases).
        return session.get(Delivery, report.delivery_id, with_for_update=True)
    subscriber_id = _subscriber_id(session, report.recipient)
    recent = select(Edition.id).order_by(Edition.id.desc()).limit(RECENT_EDITIONS).scalar_subquery()
    rows = (select(Delivery).where(Delivery.edition_id.in_(recent), Delivery.state.in_(ACCEPTED))
            .order_by(Delivery.edition_id.desc()).limit(1).with_for_update())
    if subscriber_id is not None:
        rows = rows.where(Delivery.subscriber_id == subscriber_id)
    if report.message_id:
        found = session.scalars(rows.where(Delivery.message_id == report.message_id)).first()
        if found is not None:
            return found
    if subscriber_id is None:
        return None
    if not report.address_trusted:
        return _UNVERIFIED
    # The address alone: their latest delivery a relay accepted.
    return session.scalars(rows).first()


def _subscriber_id(session: Session, address: str | None) -> int | None:
    if not address:
        return None
    try:
        _, key = check_address(address)
    except InvalidSubscriber:
        return None
    return session.scalar(select(Subscriber.id).where(Subscriber.email_key == key))


def _has_event(session: Session, delivery_id: int, kind: BounceKind | None) -> bool:
    """Whether the delivery has a report of this kind (None: of any kind)."""
    query = select(BounceEvent.id).where(BounceEvent.delivery_id == delivery_id)
    if kind is not None:
        query = query.where(BounceEvent.kind == kind.value)
    return session.scalar(query.limit(1)) is not None


def _bounce(session: Session, delivery: Delivery, subscriber: Subscriber, report: Report, now: datetime,
            *, note: str | None = None) -> None:
    if delivery.state in (DeliveryState.SENT, DeliveryState.UNKNOWN):
        delivery.state = DeliveryState.BOUNCED.value
        delivery.last_code = report.smtp_code
        delivery.last_reply = f"late bounce ({report.source}): {report.diagnostic or report.code or 'no reason given'}"
        # The same instant as the subscriber's event, as the ledger does for a refusal at
        # send: `subscribers show` lines the row up with the history.
        delivery.updated_at = now
        # A finished edition's stored counts had this row sent (or unknown).
        forget(session, [delivery.edition_id])
    if subscriber.status == SubscriberStatus.ACTIVE:
        subscriber.transient_bounces = 0
        # The note carries the code, never the diagnostic (it quotes the address).
        apply_change(session, subscriber, via=ChangeVia.BOUNCE, at=now, status=SubscriberStatus.BOUNCED,
                     note=note or f"late bounce {report.code or ''} {report.reason or ''} ({report.source})"
                     .replace("  ", " ").replace("  ", " "))


def _count_transient(session: Session, delivery: Delivery, subscriber: Subscriber, *, limit: int,
                     now: datetime) -> None:
    """The run of editions, from this one back, whose delivery to them drew a temporary failure."""
    editions = (select(Edition.id).where(Edition.id <= delivery.edition_id).order_by(Edition.id.desc())
                .limit(limit * 4).scalar_subquery())
    recent = session.scalars(
        select(Delivery.id).where(Delivery.subscriber_id == subscriber.id, Delivery.edition_id.in_(editions),
                                  Delivery.sent_at.is_not(None))
        .order_by(Delivery.edition_id.desc()).limit(limit)).all()
    failed = set(session.scalars(select(BounceEvent.delivery_id).where(
        BounceEvent.delivery_id.in_(recent), BounceEvent.kind == BounceKind.TRANSIENT.value)))
    run = 0
    for delivery_id in recent:
        if delivery_id not in failed:
            break
        run += 1
    subscriber.transient_bounces = run
    if run >= limit and subscriber.status == SubscriberStatus.ACTIVE:
        apply_change(session, subscriber, via=ChangeVia.BOUNCE, at=now, status=SubscriberStatus.BOUNCED,
                     note=f"temporary failures in {run} editions in a row")


def _apply_signup(session: Session, subscriber: Subscriber, report: Report, now: datetime) -> None:
    """A report about a sign-up's confirmation mail (its own VERP tag): recorded like any
    report, then the sign-up's answer to it (readers/signup.py `confirmation_returned`)."""
    session.add(BounceEvent(fingerprint=report.fingerprint, kind=report.kind.value, source=report.source,
                            subscriber_id=subscriber.id, recipient=report.recipient, code=report.code,
                            reason=report.reason, diagnostic=report.diagnostic, received_at=now))
    session.flush()
    confirmation_returned(session, subscriber, report.kind, now=now,
                          note=f"confirmation mail {_SAID[report.kind]} {report.code or ''} "
                               f"({report.source})".replace("  ", " "))


_SAID = {BounceKind.PERMANENT: "bounced", BounceKind.TRANSIENT: "failed for now",
         BounceKind.SENDER: "refused for our side", BounceKind.COMPLAINT: "reported as spam",
         BounceKind.REVIEW: "came back unreadable", BounceKind.DISMISSED: "came back, dismissed"}
