"""The weekly slot and the reconciler. Beat is only a tick: the database decides."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, time, timedelta

from sqlalchemy import Engine, select

from worker.delivery import ledger, liveness
from worker.delivery.guard import check_week
from worker.delivery.local_time import LocalSend, due_times
from worker.delivery.plan import finish_if_done, plan_edition, record_skipped_edition
from worker.delivery.relay import resume_probed
from worker.digest import week_of, week_window, weekly_edition_key
from worker.ingest.sources import PollResult, poll_all_sources, poll_due_sources
from worker.settings import Settings
from worker.store.db import session_scope
from worker.store.models import Edition, EditionState, Source, Story, Subscriber

log = logging.getLogger(__name__)
DAYS = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
Publish = Callable[[int, list[int]], None]


def latest_slot(now: datetime, settings: Settings) -> datetime:
    """The most recent weekly send time at or before `now`, as an aware local datetime."""
    tz = settings.tz
    local = now.astimezone(tz)
    hour, minute = (int(x) for x in settings.send_time.split(":"))
    day = local.date() - timedelta(days=(local.weekday() - DAYS.index(settings.send_day)) % 7)
    slot = datetime.combine(day, time(hour, minute), tzinfo=tz)
    if slot > local:
        slot = datetime.combine(day - timedelta(days=7), time(hour, minute), tzinfo=tz)
    return slot


def week_for_slot(slot: datetime, settings: Settings) -> str:
    """The last full ISO week that ended before the slot's week began."""
    monday = slot.date() - timedelta(days=slot.weekday())
    return week_of(datetime.combine(monday - timedelta(days=1), time(12), tzinfo=settings.tz), settings.tz)


@dataclass(frozen=True)
class Due:
    key: str
    week: str
    slot: datetime
    edition_id: int | None
    action: str  # 'planned', 'held', 'exists', 'skipped', 'before-start'


def next_slot(slot: datetime) -> datetime:
    """The weekly slot after `slot`: the same wall time a week later (whatever DST did)."""
    return datetime.combine(slot.date() + timedelta(days=7), slot.time(), tzinfo=slot.tzinfo)


def local_send(slot: datetime, settings: Settings) -> LocalSend:
    return LocalSend.of(slot.date(), settings)


def release_local_send(edition: Edition, settings: Settings) -> LocalSend | None:
    """The per-reader send times of a weekly edition approved after a hold: those of its
    slot (the send day after its week), so rows whose hour has passed go at once and the
    others at their hour. None for a manual edition: its rows are due at once."""
    if edition.kind != "weekly":
        return None
    monday = edition.window_start.astimezone(settings.tz).date()
    return LocalSend.of(monday + timedelta(days=7 + DAYS.index(settings.send_day)), settings)


def first_morning(engine: Engine, slot: datetime, settings: Settings, now: datetime) -> datetime | None:
    """When the slot's edition must be planned, if that is at or before `now`: the send
    time in the earliest zone a reader is in, which is the slot itself for readers in
    NEWSLETTER_TIMEZONE and earlier for readers east of it. None while it is still ahead
    (without reading the zones before the send time has come anywhere on Earth)."""
    send = local_send(slot, settings)
    if now < send.earliest_possible:
        return None
    with session_scope(engine) as session:
        earliest = due_times(session, send).earliest
    return earliest if now >= earliest else None


def ensure_weekly_edition(engine: Engine, settings: Settings, now: datetime) -> Due:
    """Create the edition for the latest slot if it is missing, or record it skipped
    when the slot passed more than NEWSLETTER_CATCH_UP_HOURS ago (unless it came before
    anything was stored: a fresh install has missed nothing).

    The latest slot is the one whose first reader's morning has come, once its week has
    ended in NEWSLETTER_TIMEZONE: the next slot's edition is planned as soon as both the
    week is over and the send time has come in the earliest zone a reader is in (its rows
    for readers further west wait for their own hour; readers whose morning had already
    come get it at once). Every feed is polled right before planning, so the week's
    sources have been polled once after the week closed.
    """
    slot = latest_slot(now, settings)
    upcoming = next_slot(slot)
    upcoming_week = week_for_slot(upcoming, settings)
    if _edition_id(engine, weekly_edition_key(upcoming_week)) is not None or (
            now >= week_window(upcoming_week, settings.tz).end
            and first_morning(engine, upcoming, settings, now) is not None):
        slot = upcoming
    week = week_for_slot(slot, settings)
    key = weekly_edition_key(week)
    existing = _edition_id(engine, key)
    if existing is not None:
        return Due(key, week, slot, existing, "exists")
    window = week_window(week, settings.tz)
    late = now - slot
    if late > timedelta(hours=settings.catch_up_hours):
        started = first_stored(engine)
        if started is None or slot < started:
            log.debug("%s: its slot %s came before anything was stored here (first at %s): not missed",
                     key, slot.isoformat(), started.isoformat() if started else "never")
            return Due(key, week, slot, None, "before-start")
        reason = (f"missed: the weekly send was due {slot.isoformat()} and nothing ran until "
                  f"{now.astimezone(settings.tz).isoformat()}, past the {settings.catch_up_hours:g} h "
                  "catch-up window (NEWSLETTER_CATCH_UP_HOURS)")
        made = record_skipped_edition(engine, key=key, window=window, reason=reason, now=now)
        log.warning("%s %s", key, reason)
        return Due(key, week, slot, None, "skipped" if made else "exists")
    # One last look at every feed, so the edition has the stories of the week's last hours.
    _log_polls(poll_all_sources(engine, settings, now))
    hold = check_week(engine, settings, window, key=key).hold
    planned = plan_edition(engine, key=key, kind="weekly", window=window, now=now, hold=hold, wider=settings.wider,
                           local=local_send(slot, settings))
    if hold and planned.created:
        log.warning("%s held: %s", key, hold)
    return Due(key, week, slot, planned.edition_id,
               ("held" if hold else "planned") if planned.created else "exists")


def first_stored(engine: Engine) -> datetime | None:
    """When this install started, as far as its data tells: the earliest time a subscriber,
    story, source or edition was stored. Each table's first row by id, not MIN(created_at):
    a primary key lookup every tick instead of a scan (ids only grow, so the first row is
    the oldest)."""
    with session_scope(engine) as session:
        found = [session.scalar(select(model.created_at).order_by(model.id).limit(1))
                 for model in (Subscriber, Story, Source, Edition)]
    return min((at for at in found if at is not None), default=None)


def _edition_id(engine: Engine, key: str) -> int | None:
    with session_scope(engine) as session:
        return session.scalar(select(Edition.id).where(Edition.key == key))


@dataclass
class Reconciled:
    due: Due | None = None
    expired: int = 0
    batches: int = 0
    finished: list[str] | None = None
    polled: list[PollResult] | None = None
    resumed: list[str] | None = None


def dispatch(engine: Engine, settings: Settings, edition_id: int, publish: Publish, now: datetime) -> int:
    """Hand every due, unleased, not-recently-enqueued row of an edition to the broker."""
    batches = ledger.dispatchable(engine, edition_id=edition_id, now=now,
                                  redispatch_after=settings.redispatch_after,
                                  batch_size=settings.batch_size)
    for ids in batches:
        # Marked first: a worker may take the batch the moment it is published.
        ledger.mark_enqueued(engine, ids=ids, now=now)
        try:
            publish(edition_id, ids)
        except BaseException:
            # A broker that is down raises here: this batch and the rest stay ready.
            ledger.unmark_enqueued(engine, ids=ids, now=now)
            raise
    return len(batches)


def dispatch_recovered(engine: Engine, settings: Settings, editions: set[int], publish: Publish,
                       now: datetime) -> int:
    """Hand out at once the rows a dead worker held, in the editions still sending."""
    with session_scope(engine) as session:
        sending = list(session.scalars(select(Edition.id).where(
            Edition.id.in_(editions), Edition.state == EditionState.SENDING.value)))
    return sum(dispatch(engine, settings, edition_id, publish, now) for edition_id in sending)


def reconcile(engine: Engine, settings: Settings, publish: Publish, now: datetime,
              *, weekly: bool = True, sources: bool = True) -> Reconciled:
    """One tick: the due weekly edition exists; stuck `sending` rows become `unknown`;
    due rows of every sending edition go to the broker; finished editions are closed;
    sources whose poll time has come are polled."""
    out = Reconciled(finished=[])
    if weekly:
        out.due = ensure_weekly_edition(engine, settings, now)
    liveness.recover(engine, now=now, timeout=settings.liveness_timeout)
    out.expired = ledger.expire_sending(engine, now=now)
    # Before the hand-out: an edition the relay answers for again goes out in this tick.
    out.resumed = resume_probed(engine, settings, now)
    with session_scope(engine) as session:
        live = session.execute(
            select(Edition.id, Edition.key).where(Edition.state == EditionState.SENDING.value)
        ).all()
    for edition_id, key in live:
        out.batches += dispatch(engine, settings, edition_id, publish, now)
        if finish_if_done(engine, edition_id, now):
            out.finished.append(key)
    if sources:
        # Last: a slow feed (up to its fetch deadline) must not delay handing out mail.
        out.polled = _log_polls(poll_due_sources(engine, settings, now))
    return out


def _log_polls(results: list[PollResult]) -> list[PollResult]:
    for result in results:
        if result.outcome == "failed":
            log.warning("source %s", result)
        else:
            log.info("source %s", result)
    return results
