"""Each reader's local send time: when a weekly edition's ledger row falls due.

A reader's zone is their own (subscribers.timezone), else their first region's main
zone (worker/zones.py, NEWSLETTER_REGION_TIMEZONES), else NEWSLETTER_TIMEZONE. The row is
due at NEWSLETTER_SEND_TIME on the send day's date in that zone, whatever its offset that
day. A wall time the zone skips (02:30 on a spring-forward night) is read with the offset
from before the change, so it lands as far past the gap as it was into it (03:30 new
time); a wall time that happens twice (autumn) is its first occurrence. That is Python's
`fold=0` (PEP 495), written here so the rule has one home; worker/readers/zones.py
applies the same choice of zone to one reader on screen.

Planning stays one INSERT ... SELECT: the zones in use are read with two DISTINCT
queries, grouped by the instant their morning comes, and each row's `due_at` is a CASE
over those groups, so no subscriber passes through Python.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta, timezone
from zoneinfo import ZoneInfo

from sqlalchemy import case, func, literal, select
from sqlalchemy.orm import Session

from worker.settings import Settings
from worker.store.models import Delivery, Subscriber, SubscriberStatus
from worker.zones import ZoneError, normalise_zone, region_zone

log = logging.getLogger(__name__)
D = Delivery.__table__
# The earliest civil time anywhere (Pacific/Kiritimati): no reader's morning comes before
# the send time at this offset, so nothing needs asking before it.
EARLIEST = timezone(timedelta(hours=14))


@dataclass(frozen=True)
class LocalSend:
    """The send day (one calendar date, in every zone), the wall-clock send time, and the
    zones of readers who gave none: their region's, else `default_zone`."""

    day: date
    at: time
    default_zone: str = "UTC"
    region_zones: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, day: date, settings: Settings) -> LocalSend:
        hour, minute = (int(x) for x in settings.send_time.split(":"))
        return cls(day, time(hour, minute), settings.timezone, settings.region_timezones)

    def due_in(self, zone: str) -> datetime:
        """This send time in `zone`, as an aware UTC instant (fold=0: see the module)."""
        return datetime.combine(self.day, self.at, tzinfo=ZoneInfo(zone)).astimezone(UTC)

    @property
    def earliest_possible(self) -> datetime:
        return datetime.combine(self.day, self.at, tzinfo=EARLIEST).astimezone(UTC)


def first_region():
    """The first code of a stored region set ('RU UA'): codes are two letters."""
    return func.substr(Subscriber.regions, 1, 2)


@dataclass(frozen=True)
class DueTimes:
    """The zones in use, grouped by the instant the send time comes in them."""

    default: datetime
    # instant -> (reader zones, first regions of readers without a zone)
    groups: dict[datetime, tuple[list[str], list[str]]]

    @property
    def earliest(self) -> datetime:
        return min([self.default, *self.groups])

    def column(self):
        """The SQL value of a subscriber's due time (naive UTC, as the column stores it)."""
        naive = D.c.due_at.type
        whens = []
        for instant, (zones, regions) in sorted(self.groups.items()):
            value = literal(instant, naive)
            if zones:
                whens.append((Subscriber.timezone.in_(zones), value))
            if regions:
                whens.append(((Subscriber.timezone.is_(None)) & first_region().in_(regions), value))
        default = literal(self.default, naive)
        return case(*whens, else_=default) if whens else default


def due_times(session: Session, send: LocalSend) -> DueTimes:
    """Read the zones active readers are in (two DISTINCT queries) and when each one's
    send time comes. Readers whose zone gives the same instant as NEWSLETTER_TIMEZONE are
    left to the CASE's ELSE."""
    active = Subscriber.status == SubscriberStatus.ACTIVE.value
    default = send.due_in(send.default_zone)
    groups: dict[datetime, tuple[list[str], list[str]]] = {}
    for stored in session.scalars(select(Subscriber.timezone).distinct().where(active,
                                                                               Subscriber.timezone.is_not(None))):
        try:
            zone = normalise_zone(stored)
        except ZoneError:
            # Stored under older tz data that has since dropped the name: the default, said once.
            log.warning("readers in time zone %r, unknown here, get NEWSLETTER_TIMEZONE's send time", stored)
            continue
        instant = send.due_in(zone)
        if instant != default:
            groups.setdefault(instant, ([], []))[0].append(stored)
    for region in session.scalars(select(first_region()).distinct().where(active, Subscriber.timezone.is_(None))):
        zone = region_zone(region, send.region_zones)
        if zone is None:
            continue
        instant = send.due_in(zone)
        if instant != default:
            groups.setdefault(instant, ([], []))[1].append(region)
    return DueTimes(default, groups)

