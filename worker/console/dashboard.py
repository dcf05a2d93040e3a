"""The dashboard's numbers (/operator), each read with a few grouped queries, never row by row:

- active readers per region: one GROUP BY on the region-set text (the (status, regions)
  index), split into regions here; a reader following "RU UA" counts once for RU and once
  for UA, and once in the total;
- the list's weeks: reader events per ISO week (UTC, Monday first) over the last
  `WEEKS` weeks, this week included, counted per kind and day in the database (the
  (at, kind) index) and folded into weeks here. What each measure counts, in
  subscriber_events' kinds (EventKind):
  sign-ups = `requested` (the web form mailed a confirmation link) + `subscribed` (added
  active by an operator: CLI or import); confirmations = `confirmed`; unsubscribes =
  `unsubscribed`; bounces = `bounced` (a reader suppressed by a permanent bounce);
  complaints = `complained`. A reader who signs up and confirms counts in both;
  reactivations and changes of region, name or zone count in none;
- the editions created last and every unfinished one, with their rows by state and their
  bounce and complaint rates against the thresholds `newsletter status` warns at
  (worker/delivery/status.py): a finished edition's from its stored tallies
  (worker/delivery/tallies.py), an unfinished one's counted at each look when it has at
  most LIVE_COUNT rows; a larger unfinished one shows its state and total, and its report
  has the counts;
- held editions, and how many readers approving each would send to now;
- the sources' health.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta

from sqlalchemy import Engine, func, select

from worker import editions
from worker.clock import utcnow
from worker.delivery.plan import active_region_sets
from worker.delivery.status import (
    BOUNCE_ALARM,
    BOUNCE_WARN,
    COMPLAINT_ALARM,
    COMPLAINT_WARN,
    STATES,
    bounce_rate,
)
from worker.delivery.tallies import LIVE_SNAPSHOT_FROM, Tallies, count_tallies, is_finished, stored_live, tallies_of
from worker.ingest.sources import list_sources
from worker.redact import mask_url
from worker.regions import region_name
from worker.store.db import session_scope
from worker.store.models import BounceEvent, BounceKind, Delivery, DeliveryState, Edition, EditionState, EventKind
from worker.store.models import SubscriberEvent as Event

WEEKS = 26
RECENT_EDITIONS = 10
# An unfinished edition with more rows than this is not counted on the dashboard: at each
# look that is a scan of all its rows (its report counts them).
LIVE_COUNT = LIVE_SNAPSHOT_FROM
# A URL is shown whole (the operator configured it) but bounded, and never with its credentials.
MAX_URL = 300

# (measure, heading, the event kinds it counts): the order of the charts and the table's columns.
MEASURES: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("signups", "Sign-ups", (EventKind.REQUESTED.value, EventKind.SUBSCRIBED.value)),
    ("confirmations", "Confirmations", (EventKind.CONFIRMED.value,)),
    ("unsubscribes", "Unsubscribes", (EventKind.UNSUBSCRIBED.value,)),
    ("bounces", "Bounces", (EventKind.BOUNCED.value,)),
    ("complaints", "Complaints", (EventKind.COMPLAINED.value,)),
)
# (warn, alarm) for each edition rate, as `newsletter status` judges them.
THRESHOLDS = {"bounces": (BOUNCE_WARN, BOUNCE_ALARM), "complaints": (COMPLAINT_WARN, COMPLAINT_ALARM)}
_MEASURE_OF = {kind: measure for measure, _, kinds in MEASURES for kind in kinds}
SENT, BOUNCED = DeliveryState.SENT.value, DeliveryState.BOUNCED.value


@dataclass(frozen=True)
class RegionCount:
    code: str
    name: str
    active: int


@dataclass(frozen=True)
class Week:
    start: date        # its Monday
    label: str         # ISO, "2025-W05"
    counts: Mapping[str, int]   # measure (MEASURES) -> events


@dataclass(frozen=True)
class Rate:
    """A share against two thresholds: `level` is "ok", "warn" or "alarm"."""

    count: int
    over: int
    value: float
    level: str


@dataclass(frozen=True)
class EditionLine:
    key: str
    label: str
    state: str
    reason: str | None
    note: str | None
    created_at: datetime
    total: int
    # False: a live edition with more than LIVE_COUNT rows, not counted at each look (its
    # report counts them); the fields below are then empty.
    counted: bool = False
    counts: Mapping[str, int] = field(default_factory=dict)   # every DeliveryState, in order, zeros included
    retry_scheduled: int = 0
    skip_reasons: Mapping[str, int] = field(default_factory=dict)
    bounces: Rate | None = None        # readers bounced over messages tried (at RCPT and late)
    complaints: Rate | None = None     # complaints over messages the relay accepted


@dataclass(frozen=True)
class SourceRow:
    id: int   # the `source` label of the metrics
    url: str
    region: str | None
    last_success: datetime | None
    last_error: str | None
    last_error_at: datetime | None
    failures: int
    next_poll: datetime | None


@dataclass(frozen=True)
class Dashboard:
    at: datetime
    regions: tuple[RegionCount, ...]   # most followed first
    active: int                        # active readers, each once
    weeks: tuple[Week, ...]            # oldest first
    editions: tuple[EditionLine, ...]  # newest first
    held: tuple[tuple[EditionLine, int], ...]   # and how many readers approving it sends to now
    sources: tuple[SourceRow, ...]


def dashboard(engine: Engine, *, region_names: Mapping[str, str] | None = None, now: datetime | None = None,
              weeks: int = WEEKS, recent: int = RECENT_EDITIONS, wider: bool = False) -> Dashboard:
    now = now or utcnow()
    # The readers per region and the weeks each read a large part of the list, and neither
    # needs the other: each runs on a connection of its own, side by side on the database's
    # cores, so the page waits for the longest, not for their sum.
    with ThreadPoolExecutor(max_workers=3, thread_name_prefix="dashboard") as pool:
        per_region = pool.submit(active_regions, engine, region_names)
        weeks_read = pool.submit(weekly, engine, now=now, weeks=weeks)
        lines = edition_lines(engine, recent=recent)
        held = tuple((line, editions.approval_sends(engine, line.key, wider=wider)) for line in lines
                     if line.state == EditionState.HELD.value)
        shown_sources = sources(engine)
        regions, active = per_region.result()
        return Dashboard(at=now, regions=regions, active=active, weeks=weeks_read.result(), editions=lines,
                         held=held, sources=shown_sources)


def active_regions(engine: Engine, names: Mapping[str, str] | None = None) -> tuple[tuple[RegionCount, ...], int]:
    """Active readers per region, most followed first, and the active readers in all."""
    with session_scope(engine) as session:
        sets = active_region_sets(session)
    per_region: Counter[str] = Counter()
    for regions, n in sets:
        for code in set(regions.split()):
            per_region[code] += n
    ordered = sorted(per_region.items(), key=lambda kv: (-kv[1], kv[0]))
    return (tuple(RegionCount(code, region_name(code, names), n) for code, n in ordered),
            sum(n for _, n in sets))


def week_starts(now: datetime, weeks: int = WEEKS) -> list[date]:
    """The Mondays of the last `weeks` ISO weeks (UTC), oldest first, this week last."""
    this = now.astimezone(UTC).date()
    this -= timedelta(days=this.weekday())
    return [this - timedelta(weeks=back) for back in range(weeks - 1, -1, -1)]


def weekly(engine: Engine, *, now: datetime, weeks: int = WEEKS) -> tuple[Week, ...]:
    """Each measure per week (MEASURES), zeros included."""
    starts = week_starts(now, weeks)
    begin = datetime.combine(starts[0], datetime.min.time(), tzinfo=UTC)
    end = begin + timedelta(weeks=weeks)
    # date() of a stored UTC instant is its UTC day on both databases (a string on SQLite,
    # a date on PostgreSQL): at most `weeks * 7 * kinds` rows come back.
    day = func.date(Event.at)
    with session_scope(engine) as session:
        rows = session.execute(
            select(day, Event.kind, func.count())
            .where(Event.at >= begin, Event.at < end, Event.kind.in_(list(_MEASURE_OF)))
            .group_by(day, Event.kind)).all()
    counts: dict[date, Counter[str]] = {start: Counter() for start in starts}
    for when, kind, n in rows:
        on = when if isinstance(when, date) else date.fromisoformat(str(when)[:10])
        monday = on - timedelta(days=on.weekday())
        if monday in counts:
            counts[monday][_MEASURE_OF[kind]] += n
    return tuple(Week(start=start, label=_iso_week(start),
                      counts={measure: counts[start][measure] for measure, _, _ in MEASURES}) for start in starts)


def _iso_week(monday: date) -> str:
    year, week, _ = monday.isocalendar()
    return f"{year}-W{week:02d}"


def edition_lines(engine: Engine, *, recent: int = RECENT_EDITIONS) -> tuple[EditionLine, ...]:
    """Every unfinished edition and the `recent` created last, newest first. A finished
    edition's rows are its stored tallies (worker/delivery/tallies.py); an unfinished one's
    are counted now when it has at most LIVE_COUNT rows, and not at all past that: its
    line says its state and total, and its report has the counts."""
    shown = editions.in_view(engine, recent_limit=recent)
    with session_scope(engine) as session:
        rows = tallies_of(session, [e for e in shown if is_finished(e)], summary=True)
        rows.update({e.id: count_tallies(session, e.id, minutes=False, reasons=False) for e in shown
                     if not is_finished(e) and e.total <= LIVE_COUNT})
        # A large live edition's count when its report made one in the last LIVE_MAX_AGE.
        rows.update(stored_live(session, [e.id for e in shown if not is_finished(e) and e.total > LIVE_COUNT],
                                summary=True))
    reports = _reports(engine, list(rows))
    return tuple(_line(e, rows.get(e.id), reports.get(e.id, {})) for e in shown)


def _reports(engine: Engine, ids: list[int]) -> dict[int, dict[str, int]]:
    """Per edition: deliveries with a late report of each kind (each delivery once per
    kind), and "late-bounced": those a permanent report turned `bounced`; as
    worker/delivery/status.py counts them, for all the listed editions at once."""
    if not ids:
        return {}
    out: dict[int, dict[str, int]] = {}
    with session_scope(engine) as session:
        for edition_id, kind, n in session.execute(
                select(BounceEvent.edition_id, BounceEvent.kind, func.count(BounceEvent.delivery_id.distinct()))
                .where(BounceEvent.edition_id.in_(ids)).group_by(BounceEvent.edition_id, BounceEvent.kind)):
            out.setdefault(edition_id, {})[kind] = n
        for edition_id, n in session.execute(
                select(BounceEvent.edition_id, func.count(BounceEvent.delivery_id.distinct()))
                .join(Delivery, Delivery.id == BounceEvent.delivery_id)
                .where(BounceEvent.edition_id.in_(ids), BounceEvent.kind == BounceKind.PERMANENT.value,
                       Delivery.state == BOUNCED).group_by(BounceEvent.edition_id)):
            out.setdefault(edition_id, {})["late-bounced"] = n
    return out


def _line(edition: Edition, rows: Tallies | None, reports: dict[str, int]) -> EditionLine:
    """The edition's line; without `rows` (a live edition too large to count at each look),
    its state and total only."""
    line = EditionLine(key=edition.key, label=edition.label, state=edition.state, reason=edition.reason,
                       note=edition.note, created_at=edition.created_at, total=edition.total)
    if rows is None:
        return line
    sent, bounced = rows.counts[SENT], rows.counts[BOUNCED]
    bounce = bounce_rate(sent=sent, bounced=bounced, late_bounced=reports.get("late-bounced", 0))
    accepted = sent + reports.get(BounceKind.PERMANENT.value, 0)
    complaints = reports.get(BounceKind.COMPLAINT.value, 0)
    complaint_rate = complaints / accepted if accepted else 0.0
    complaint_level = ("alarm" if complaint_rate >= COMPLAINT_ALARM
                       else "warn" if complaint_rate >= COMPLAINT_WARN else "ok")
    return replace(
        line, counted=True, counts={state: rows.counts.get(state, 0) for state in STATES},
        retry_scheduled=rows.retry_scheduled, skip_reasons=dict(sorted(rows.skips.items())),
        bounces=Rate(count=bounce["at_rcpt"] + bounce["late"], over=bounce["tried"], value=bounce["rate"],
                     level=bounce["alert"] or "ok"),
        complaints=Rate(count=complaints, over=accepted, value=complaint_rate, level=complaint_level))


def sources(engine: Engine) -> tuple[SourceRow, ...]:
    return tuple(SourceRow(id=s.id, url=_shown_url(s.url), region=s.region, last_success=s.last_success_at,
                           last_error=s.last_error, last_error_at=s.last_error_at,
                           failures=s.consecutive_failures, next_poll=s.next_poll_at) for s in list_sources(engine))


def _shown_url(url: str) -> str:
    url = mask_url(url)  # an unparsable one (a file path, or odd) as it is, escaped
    return url if len(url) <= MAX_URL else url[:MAX_URL] + "…"
