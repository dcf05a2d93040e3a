"""The console's editions: the list (newest first, a page at a time) and one edition's
report, as plain data.

At scale an edition has as many rows as the list has readers, too many to count at each
look. The report's counts (by state, SMTP code and region set, the sending
span, the sends per minute, the commonest failure reasons) are the edition's tallies
(worker/delivery/tallies.py): stored once a finished edition (done or skipped) is counted,
when it finishes or at its first look, and counted at each look while it is live (sending,
paused, held). The unknown rows are a bounded query, asked only when there are such rows.
The list counts nothing per edition beyond what the edition row stores: its page answers
alike for two editions or fifty of a million rows each.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, select

from worker.clicks import EditionOpens, edition_opens
from worker.clock import utcnow
from worker.delivery.status import _late_reports
from worker.delivery.tallies import REPLY_CHARS, FailureReason, state_order, tallies_for
from worker.store.db import session_scope
from worker.store.models import Delivery, DeliveryState, Edition, EditionState, Subscriber

D = Delivery.__table__
STATES = [s.value for s in DeliveryState]
FAILED, UNKNOWN = DeliveryState.FAILED.value, DeliveryState.UNKNOWN.value
# Bounds on what one page lists; the counts behind them are never cut.
PAGE = 50
UNKNOWN_SHOWN = 20
REGION_SETS = 50
# The chart's bars: a long span is bucketed wider than a minute to stay within this.
MAX_BARS = 60
_WIDTHS = (1, 2, 5, 10, 15, 30, 60, 120, 180, 360, 720, 1440)


@dataclass(frozen=True)
class ListedEdition:
    id: int
    key: str
    label: str
    kind: str
    state: EditionState
    reason: str | None
    total: int
    created_at: datetime
    finished_at: datetime | None


@dataclass(frozen=True)
class EditionList:
    editions: list[ListedEdition]
    # ?before= for the next (older) page; None when this is the last.
    older: int | None


def edition_list(engine: Engine, *, before: int | None = None, limit: int = PAGE) -> EditionList:
    """Editions by id, newest first: keyset on the primary key."""
    query = select(Edition.id, Edition.key, Edition.label, Edition.kind, Edition.state, Edition.reason,
                   Edition.total, Edition.created_at, Edition.finished_at).order_by(Edition.id.desc())
    if before is not None:
        query = query.where(Edition.id < before)
    with session_scope(engine) as session:
        rows = session.execute(query.limit(limit + 1)).all()
    shown = [ListedEdition(r.id, r.key, r.label, r.kind, EditionState(r.state), r.reason, r.total, r.created_at,
                           r.finished_at) for r in rows[:limit]]
    return EditionList(shown, shown[-1].id if len(rows) > limit else None)


@dataclass(frozen=True)
class RegionSetCounts:
    regions: str
    total: int
    counts: Mapping[str, int]   # by state, only states with rows


@dataclass(frozen=True)
class UnknownRow:
    delivery: int
    email: str
    reply: str | None
    at: datetime


@dataclass(frozen=True)
class Chart:
    bars: list[tuple[str, int]]
    minutes: int                # each bar's width
    start: datetime
    end: datetime


@dataclass(frozen=True)
class Report:
    id: int
    key: str
    label: str
    kind: str
    state: EditionState
    reason: str | None
    note: str | None
    window_start: datetime
    window_end: datetime
    created_at: datetime
    finished_at: datetime | None
    resume_at: datetime | None
    total: int
    counts: Mapping[str, int]                      # every state, zeros included
    retry_scheduled: int                           # failed rows with a retry time
    codes: list[tuple[str, int, int]]              # (state, SMTP code, rows)
    region_sets: list[RegionSetCounts]             # the most rows first, REGION_SETS of them
    region_sets_more: int                          # region sets not listed
    reasons: list[FailureReason]
    reasons_more: int                              # failed rows in reasons not listed
    unknown: list[UnknownRow]
    unknown_more: int
    late: Mapping[str, Any]                        # worker/delivery/status.py: _late_reports
    chart: Chart | None                            # None: nothing sent yet
    read_at: datetime = field(default_factory=utcnow)
    # Opens through the click redirect (worker/clicks.py).
    opens: EditionOpens = EditionOpens()

    @property
    def failed(self) -> int:
        return self.counts[FAILED]


def edition_report(engine: Engine, key: str) -> Report | None:
    """The edition's report; None when there is no edition by that key. A finished
    edition's tallies are read as stored (worker/delivery/tallies.py), a live one's
    counted now."""
    with session_scope(engine) as session:
        edition = session.scalar(select(Edition).where(Edition.key == key))
        if edition is None:
            return None
        read = tallies_for(session, edition)
        counts = read.counts
        unknown = _unknown(session, edition.id, read.first_id or 0) if counts[UNKNOWN] else []
    listed = sorted(read.sets.items(), key=lambda kv: (-sum(kv[1].values()), kv[0]))
    return Report(
        id=edition.id, key=edition.key, label=edition.label, kind=edition.kind, state=EditionState(edition.state),
        reason=edition.reason, note=edition.note, window_start=edition.window_start, window_end=edition.window_end,
        created_at=edition.created_at, finished_at=edition.finished_at, resume_at=edition.resume_at,
        total=edition.total, counts=counts, retry_scheduled=read.retry_scheduled, codes=read.codes,
        region_sets=[RegionSetCounts(regions, sum(by.values()),
                                     dict(sorted(by.items(), key=lambda kv: state_order(kv[0]))))
                     for regions, by in listed[:REGION_SETS]],
        region_sets_more=max(0, len(listed) - REGION_SETS),
        reasons=read.reasons, reasons_more=counts[FAILED] - sum(r.rows for r in read.reasons),
        unknown=unknown, unknown_more=counts[UNKNOWN] - len(unknown),
        late=_late_reports(engine, edition.id, sent=counts[DeliveryState.SENT.value],
                           bounced=counts[DeliveryState.BOUNCED.value]),
        chart=_chart(read.minutes, read.span) if read.span is not None else None, read_at=read.made_at,
        opens=edition_opens(engine, edition.id))


def _unknown(session, edition_id: int, first_id: int) -> list[UnknownRow]:
    # From the edition's first row on: the rows of older editions come before it in id
    # order, and the planner would otherwise read through them.
    found = session.execute(
        select(D.c.id, Subscriber.email, D.c.last_reply, D.c.updated_at)
        .join(Subscriber, Subscriber.id == D.c.subscriber_id)
        .where(D.c.edition_id == edition_id, D.c.id >= first_id, D.c.state == UNKNOWN).order_by(D.c.id)
        .limit(UNKNOWN_SHOWN)).all()
    return [UnknownRow(r.id, r.email, (r.last_reply or "")[:REPLY_CHARS] or None, r.updated_at) for r in found]


def bar_minutes(span: timedelta) -> int:
    """A bar's width in minutes: the narrowest of _WIDTHS that keeps the span within
    MAX_BARS bars (a day's width, or more, past them)."""
    minutes = span.total_seconds() / 60 + 1
    for width in _WIDTHS:
        if minutes / width <= MAX_BARS:
            return width
    return 1440 * math.ceil(minutes / 1440 / MAX_BARS)


def _chart(minutes: dict[datetime, int], span: tuple[datetime, datetime]) -> Chart:
    """The sends per minute, counted in SQL, in at most MAX_BARS bars over the span."""
    width = bar_minutes(span[1] - span[0])
    seconds = width * 60
    origin = int(span[0].timestamp()) // seconds * seconds
    start = datetime.fromtimestamp(origin, UTC)
    n = int((span[1].timestamp() - origin) // seconds) + 1
    values = [0] * n
    for at, count in minutes.items():
        values[min(max(int((at.timestamp() - origin) // seconds), 0), n - 1)] += count
    same_day = start.date() == span[1].date()
    bars = [((start + timedelta(seconds=i * seconds)).strftime("%H:%M" if same_day else "%m-%d %H:%M"), v)
            for i, v in enumerate(values)]
    return Chart(bars, width, start, start + timedelta(seconds=n * seconds))
