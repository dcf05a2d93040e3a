"""What readers change themselves once they are in: regions, name and zone, and leaving.

Regions change from the next edition on: an edition fixes each reader's region set when
it is planned (the ledger row keeps it). Leaving, by the manage page, the last region's
leave link or the one-click unsubscribe, is a status change, which the edition being
sent sees at each row's claim.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import Engine

from worker.readers.history import KEEP, apply_change
from worker.store.db import session_scope
from worker.store.models import ChangeVia, EventKind, Subscriber, SubscriberStatus

ACTIVE = SubscriberStatus.ACTIVE


def change_subscription(engine: Engine, subscriber_id: int, *, regions: tuple[str, ...], name: str | None,
                        via: ChangeVia, now: datetime, timezone: Any = KEEP, language: Any = KEEP) -> list[EventKind]:
    """New regions (in the reader's order), name, zone (None: the region's) and language
    (None: the list's) for an active subscriber; what changed. No regions at all is leaving."""
    with session_scope(engine) as session:
        row = session.get(Subscriber, subscriber_id, with_for_update=True)
        if row is None or row.status != ACTIVE:
            return []
        if not regions:
            return apply_change(session, row, via=via, at=now, status=SubscriberStatus.UNSUBSCRIBED, name=name,
                                timezone=timezone, note="removed every region")
        return apply_change(session, row, via=via, at=now, regions=regions, name=name, timezone=timezone,
                            language=language)


class LeaveOutcome(StrEnum):
    LEFT_REGION = "left-region"   # still subscribed to the others
    LEFT = "left"                 # that was the last region, or all were asked: unsubscribed
    NOT_FOLLOWED = "not-followed"  # nothing to do
    NOT_ACTIVE = "not-active"


@dataclass(frozen=True)
class Leave:
    outcome: LeaveOutcome
    regions: tuple[str, ...] = ()  # what they still follow


def leave(engine: Engine, subscriber_id: int, region: str | None, *, via: ChangeVia, now: datetime) -> Leave:
    """Stop one region's news (None: all of them). Leaving the last region is leaving;
    the stored regions then stay as they were, for a return."""
    with session_scope(engine) as session:
        row = session.get(Subscriber, subscriber_id, with_for_update=True)
        if row is None or row.status != ACTIVE:
            return Leave(LeaveOutcome.NOT_ACTIVE)
        current = tuple(row.region_list)
        if region is not None and region not in current:
            return Leave(LeaveOutcome.NOT_FOLLOWED, current)
        rest = tuple(code for code in current if code != region) if region else ()
        if rest:
            apply_change(session, row, via=via, at=now, regions=rest)
            return Leave(LeaveOutcome.LEFT_REGION, rest)
        note = f"left {region}, their last region" if region else None
        apply_change(session, row, via=via, at=now, status=SubscriberStatus.UNSUBSCRIBED, note=note)
        return Leave(LeaveOutcome.LEFT)
