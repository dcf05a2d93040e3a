"""Undo a bounce: a bounced reader back to active by an operator's decision, kept in their
history with who and why (`newsletter subscribers reactivate`, the operator page). A
complained reader asked us to stop: only with `force` (they asked to come back)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Engine, select

from worker.operators.audit import audit
from worker.readers.history import apply_change
from worker.readers.subscribers import InvalidSubscriber, check_address
from worker.store.db import session_scope
from worker.store.models import ChangeVia, Subscriber, SubscriberStatus
from worker.text import contains_control

MAX_REASON = 200


class CannotReactivate(ValueError):
    """Refused; the message says why (shown to the operator)."""


def reactivate(engine: Engine, email: str, *, reason: str, who: str, via: ChangeVia, now: datetime,
               force: bool = False) -> str:
    """Active again; the status they had. Raises CannotReactivate."""
    reason = " ".join((reason or "").split())
    if not reason:
        raise CannotReactivate("give the reason (--reason TEXT): it is kept in the reader's history")
    if len(reason) > MAX_REASON or contains_control(reason):
        raise CannotReactivate(f"the reason must be one line of at most {MAX_REASON} characters")
    try:
        _, key = check_address(email)
    except InvalidSubscriber as exc:
        raise CannotReactivate(str(exc)) from None
    with session_scope(engine) as session:
        row = session.scalar(select(Subscriber).where(Subscriber.email_key == key).with_for_update())
        if row is None:
            raise CannotReactivate(f"{email}: no such subscriber")
        before = row.status
        if before == SubscriberStatus.COMPLAINED and not force:
            raise CannotReactivate(f"{email} complained (marked a digest as spam): reactivate only at their "
                                   "request, with --force")
        if before not in (SubscriberStatus.BOUNCED, SubscriberStatus.COMPLAINED):
            raise CannotReactivate(f"{email} is {before}: only a bounced or complained reader is reactivated "
                                   "(an unsubscribed one signs up again)")
        row.transient_bounces = 0
        apply_change(session, row, via=via, at=now, status=SubscriberStatus.ACTIVE,
                     note=f"reactivated by {who}: {reason}"[:300])
        audit(session, "subscriber-reactivated", row.email, f"was {before}: {reason}")
    return before
