"""What readers do to join: sign up (double opt-in) and confirm.

Sign-up. A request never changes what someone receives: a new address becomes a
`pending` subscriber (never planned into an edition), an existing one keeps its status
and regions. Either way one confirmation link is live per address, and a new one is
mailed at most once an hour (`RESEND_AFTER`), decided by a compare-and-set on
`confirm_sent_at` so that concurrent requests from several web processes send one mail.
Only confirming makes anyone active, and brings back an unsubscribed or bounced
address; a complained one (worker/bounces) is mailed nothing, not even a link. A link
is refused when its nonce is not the live one: used, replaced by a newer one, or
cleared by an operator's import. Sign-ups nobody confirmed
are deleted after NEWSLETTER_PENDING_EXPIRY_DAYS (`expire_pending`); one whose
confirmation mail bounced ends at once (`confirmation_returned`).

What readers change afterwards (regions, name, zone, leaving) is manage.py.
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from sqlalchemy import Engine, delete, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from worker.operators.audit import audit
from worker.readers.history import KEEP, apply_change, record
from worker.readers.subscribers import SubscriberInput, clear_confirmation
from worker.store.db import session_scope
from worker.store.models import BounceKind, ChangeVia, EventKind, Subscriber, SubscriberStatus

RESEND_AFTER = timedelta(hours=1)
ACTIVE = SubscriberStatus.ACTIVE


@dataclass(frozen=True)
class ConfirmationDue:
    """A confirmation mail to send now."""

    subscriber_id: int
    email: str
    regions: tuple[str, ...]
    nonce: str
    # The address already gets the newsletter: confirming changes its regions.
    already_active: bool
    via: ChangeVia
    # The mail's language: the sign-up's, else the reader's own; None: NEWSLETTER_LANGUAGE.
    language: str | None = None


def request_subscription(engine: Engine, item: SubscriberInput, *, via: ChangeVia,
                         now: datetime) -> ConfirmationDue | None:
    """Record a sign-up; the mail to send, or None when one went out within the hour."""
    nonce = secrets.token_urlsafe(12)
    regions = " ".join(item.regions)
    # The zone, like the name, waits for the confirmation: a form must not retime someone else's mail.
    ask = {"confirm_nonce": nonce, "confirm_sent_at": now, "confirm_regions": regions, "confirm_name": item.name,
           "confirm_timezone": None if item.timezone is KEEP else item.timezone,
           "confirm_language": None if item.language is KEEP else item.language}
    note = f"asked for {regions}"
    try:
        with session_scope(engine) as session:
            row = session.scalar(select(Subscriber).where(Subscriber.email_key == item.email_key))
            if row is not None and row.status == SubscriberStatus.COMPLAINED:
                # Marked our mail as spam: no mail at all, not even a confirmation (the form
                # must not be a way to mail them); an operator can add them back on request.
                return None
            if row is None:
                # The name waits with the request: nothing anyone typed is used before confirming.
                row = Subscriber(email=item.email, email_key=item.email_key, name=None, regions=regions,
                                 status=SubscriberStatus.PENDING.value, created_at=now, **ask)
                session.add(row)
                session.flush()
            else:
                # A sign-up nobody confirmed shows what was asked last; anyone else keeps
                # their regions until they confirm, and their name and zone for good: a form
                # anyone can fill in must not rename or retime a reader (the manage page does).
                pending = {"regions": regions} if row.status == SubscriberStatus.PENDING else {}
                known = {} if pending else {"confirm_name": None, "confirm_timezone": None, "confirm_language": None}
                mailed = session.execute(
                    update(Subscriber)
                    .where(Subscriber.id == row.id, or_(Subscriber.confirm_sent_at.is_(None),
                                                        Subscriber.confirm_sent_at <= now - RESEND_AFTER))
                    .values(**{**ask, **known}, **pending)
                    .execution_options(synchronize_session=False)
                ).rowcount
                if not mailed:
                    return None
                row.regions = pending.get("regions", row.regions)
            record(session, row, EventKind.REQUESTED, via, at=now, note=note)
            asked = None if item.language is KEEP else item.language
            return ConfirmationDue(row.id, row.email, item.regions, nonce, already_active=row.status == ACTIVE,
                                   via=via, language=asked or row.language)
    except IntegrityError:
        # A concurrent first request for the same address inserted it: that one mails.
        return None


def release_confirmation(engine: Engine, due: ConfirmationDue, *, reason: str, now: datetime) -> None:
    """The mail did not go out: record why, and let the next request send one at once."""
    with session_scope(engine) as session:
        row = session.get(Subscriber, due.subscriber_id, with_for_update=True)
        if row is None:
            return
        if row.confirm_nonce == due.nonce:
            row.confirm_sent_at = None
        record(session, row, EventKind.CONFIRM_FAILED, due.via, at=now, note=reason)


def confirmation_returned(session: Session, row: Subscriber, kind: BounceKind, *, now: datetime, note: str) -> None:
    """A report came back about the live confirmation mail (worker/bounces, by its own VERP
    tag). Bounced for good: the link dies, and a sign-up nobody confirmed ends `bounced`
    (a later sign-up may still ask again and confirm). Marked as spam: `complained`, as
    from a digest, so the form mails that address nothing more. Otherwise (a temporary
    failure, a refusal about us) the hour's hold is released, so asking again sends one."""
    if kind is BounceKind.COMPLAINT:
        clear_confirmation(row)
        if row.status != SubscriberStatus.COMPLAINED:
            apply_change(session, row, via=ChangeVia.BOUNCE, at=now, status=SubscriberStatus.COMPLAINED, note=note)
            return
    elif kind is BounceKind.PERMANENT:
        clear_confirmation(row)
        if row.status == SubscriberStatus.PENDING:
            # An active (or former) reader asking for other regions keeps their status: the
            # bounces of their digests speak for their mailbox.
            apply_change(session, row, via=ChangeVia.BOUNCE, at=now, status=SubscriberStatus.BOUNCED, note=note)
            return
    else:
        row.confirm_sent_at = None
    record(session, row, EventKind.CONFIRM_FAILED, ChangeVia.BOUNCE, at=now, note=note)


class ConfirmOutcome(StrEnum):
    LIVE = "live"    # the live link, not used yet (check_confirmation)
    CONFIRMED = "confirmed"
    USED = "used"    # not the live link: used already, replaced by a newer one, or cancelled
    GONE = "gone"    # nobody left to confirm (expired sign-up, purged)


@dataclass(frozen=True)
class Confirmation:
    outcome: ConfirmOutcome
    subscriber_id: int | None = None
    regions: tuple[str, ...] = ()
    already_active: bool = False
    # What confirming stores besides the regions (a new reader's name and zone), shown first.
    name: str | None = None
    timezone: str | None = None
    # Signed into the manage link the confirmed page shows.
    link_key: str = ""
    # The language the sign-up asked for, else the reader's: the pages' (None: the list's).
    language: str | None = None


def check_confirmation(engine: Engine, subscriber_id: int, nonce: str) -> Confirmation:
    """What confirming would do, changing nothing (the page a GET shows)."""
    with session_scope(engine) as session:
        row = session.get(Subscriber, subscriber_id)
        if row is None:
            return Confirmation(ConfirmOutcome.GONE)
        if row.confirm_nonce is None or not hmac.compare_digest(row.confirm_nonce, nonce):
            return Confirmation(ConfirmOutcome.USED, row.id, language=row.language)
        return Confirmation(ConfirmOutcome.LIVE, row.id, tuple((row.confirm_regions or row.regions).split()),
                            already_active=row.status == ACTIVE, name=row.confirm_name,
                            timezone=row.confirm_timezone, language=row.confirm_language or row.language)


def confirm_subscription(engine: Engine, subscriber_id: int, nonce: str, *, now: datetime) -> Confirmation:
    """Apply the live link's request: active, with the regions (and name) it asked for."""
    with session_scope(engine) as session:
        row = session.get(Subscriber, subscriber_id, with_for_update=True)
        if row is None:
            return Confirmation(ConfirmOutcome.GONE)
        if row.confirm_nonce is None or not hmac.compare_digest(row.confirm_nonce, nonce):
            return Confirmation(ConfirmOutcome.USED, row.id)
        regions = tuple((row.confirm_regions or row.regions).split())
        # Only a new reader's sign-up brings a name and zone (shown on the confirm page);
        # an existing reader's stay as they are, whatever a request stored before.
        new = row.status == SubscriberStatus.PENDING
        name = row.confirm_name if new and row.confirm_name is not None else KEEP
        zone = row.confirm_timezone if new and row.confirm_timezone is not None else KEEP
        language = row.confirm_language if new and row.confirm_language is not None else KEEP
        clear_confirmation(row)
        apply_change(session, row, via=ChangeVia.CONFIRM_LINK, at=now, status=ACTIVE, regions=regions, name=name,
                     timezone=zone, language=language)
        return Confirmation(ConfirmOutcome.CONFIRMED, row.id, regions, link_key=row.link_key or "")


def expire_pending(engine: Engine, *, now: datetime, after: timedelta) -> int:
    """Delete sign-ups not confirmed within `after` of their last confirmation mail."""
    with session_scope(engine) as session:
        deleted = session.execute(
            delete(Subscriber)
            .where(Subscriber.status == SubscriberStatus.PENDING.value,
                   func.coalesce(Subscriber.confirm_sent_at, Subscriber.created_at) < now - after)
            .execution_options(synchronize_session=False)
        ).rowcount or 0
        if deleted:  # by an operator's `subscribers expire`; the web app's housekeeping acts for nobody
            audit(session, "sign-ups-expired", None, f"{deleted} never confirmed")
        return deleted
