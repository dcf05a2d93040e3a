"""An edition's tallies: what the console's report and dashboard count from its deliveries
(rows by state, by SMTP code and by region set, the skip reasons, the failed rows with a
retry scheduled, the sending span, the sends per minute, the commonest failure reasons),
counted in as few passes as can be: one grouped pass over the edition's rows, the minutes
in one more (grouping sets in one scan were slower on PostgreSQL: it sorted the minutes),
the failure reasons only when rows failed.

An edition has as many rows as the list has readers, too many to count at each look.
A live edition (sending, paused, held) of more than LIVE_SNAPSHOT_FROM rows is counted
by the worker once a minute (`refresh_live`, beat's "live-counts" entry): the count is
stored without a finished_at and shown, with the time it was made, to every look while it
is younger than LIVE_MAX_AGE (its rows change by the second anyway); a look that finds none
that young counts and stores it itself. A smaller live edition is counted at each look.
Once it is finished (done or skipped) its rows change only by a late bounce, an
operator's decision (retry, resolve) or a purge, so its tallies are counted once (when
it finishes, or at the first look) and stored in edition_tallies with the edition's
finished_at; `forget` deletes them in the transaction of any change to the rows. A live
edition (sending, paused, held) is counted at each look and never stored.

Storing and forgetting exclude each other through the edition's row: `make_tallies`
counts while holding it (FOR NO KEY UPDATE; on SQLite, the database's write lock), and
`forget` takes the same lock before it deletes. A change that committed before the count
began is in it; one still open when the count began waits for it and deletes what it
stored.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, and_, delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from worker.clock import utcnow
from worker.store.db import session_scope
from worker.store.models import Delivery, DeliveryState, Edition, EditionState, EditionTally

log = logging.getLogger(__name__)

D = Delivery.__table__
T = EditionTally.__table__
STATES = [s.value for s in DeliveryState]
FAILED, SKIPPED = DeliveryState.FAILED.value, DeliveryState.SKIPPED.value
FINISHED = (EditionState.DONE.value, EditionState.SKIPPED.value)
# The failure reasons kept: the commonest, each reply cut to this many characters (replies
# carrying a queue id are all different; the rest are counted, not listed).
REASONS = 10
REPLY_CHARS = 160
# What a stored body's shape is; a body of another version is counted again.
VERSION = 1
LIVE_SNAPSHOT_FROM = 50_000
# Beat asks every minute; a count older than LIVE_REFRESH is made again, so a look finds
# one under LIVE_MAX_AGE while the worker runs.
LIVE_REFRESH = timedelta(seconds=45)
LIVE_MAX_AGE = timedelta(seconds=90)


@dataclass(frozen=True)
class FailureReason:
    code: int | None
    reply: str | None           # cut to REPLY_CHARS
    rows: int
    retry_scheduled: int        # of them, with a retry time (still open)


@dataclass(frozen=True)
class Tallies:
    edition_id: int
    counts: dict[str, int]                      # every state, zeros included
    retry_scheduled: int                        # failed rows with a retry time
    skips: dict[str, int]                       # skipped rows by skip reason
    codes: list[tuple[str, int, int]]           # (state, SMTP code, rows), in state order
    sets: dict[str, dict[str, int]]             # region set -> rows by state
    first_id: int | None                        # the edition's first row
    span: tuple[datetime, datetime] | None      # first and last sent_at; None: nothing sent
    minutes: dict[datetime, int]                # sends per minute
    reasons: list[FailureReason]                # the REASONS commonest among failed rows
    stored: bool = False                        # read from edition_tallies
    whole: bool = True                          # False: the summary only (counts, retry, skips)
    made_at: datetime = field(default_factory=utcnow)

    def summary(self) -> str:
        """The part the dashboard reads for many editions at once: a few hundred bytes,
        where the body (every region set) runs to hundreds of kilobytes on a large list."""
        return json.dumps({"version": VERSION, "counts": self.counts, "retry": self.retry_scheduled,
                           "skips": self.skips}, separators=(",", ":"))

    @classmethod
    def from_summary(cls, edition_id: int, summary: str, made_at: datetime) -> Tallies | None:
        data: dict[str, Any] = json.loads(summary)
        if data.get("version") != VERSION:
            return None
        return cls(edition_id=edition_id, counts={**dict.fromkeys(STATES, 0), **data["counts"]},
                   retry_scheduled=data["retry"], skips=data["skips"], codes=[], sets={}, first_id=None, span=None,
                   minutes={}, reasons=[], stored=True, made_at=made_at, whole=False)

    def body(self) -> str:
        return json.dumps({
            "version": VERSION, "counts": self.counts, "retry": self.retry_scheduled, "skips": self.skips,
            "codes": self.codes, "sets": self.sets, "first_id": self.first_id,
            "span": [at.isoformat() for at in self.span] if self.span else None,
            "minutes": [[at.isoformat(), n] for at, n in sorted(self.minutes.items())],
            "reasons": [[r.code, r.reply, r.rows, r.retry_scheduled] for r in self.reasons]},
            separators=(",", ":"))

    @classmethod
    def from_body(cls, edition_id: int, body: str, made_at: datetime) -> Tallies | None:
        data: dict[str, Any] = json.loads(body)
        if data.get("version") != VERSION:
            return None
        return cls(edition_id=edition_id, counts={**dict.fromkeys(STATES, 0), **data["counts"]},
                   retry_scheduled=data["retry"], skips=data["skips"],
                   codes=[(s, c, n) for s, c, n in data["codes"]], sets=data["sets"], first_id=data["first_id"],
                   span=tuple(datetime.fromisoformat(at) for at in data["span"]) if data["span"] else None,
                   minutes={datetime.fromisoformat(at): n for at, n in data["minutes"]},
                   reasons=[FailureReason(*r) for r in data["reasons"]], stored=True, made_at=made_at)


def is_finished(edition: Edition) -> bool:
    return edition.state in FINISHED and edition.finished_at is not None


def tallies_for(db: Engine | Session, edition: Edition) -> Tallies:
    """The edition's tallies: for a finished edition the stored ones when they were made
    for its finished_at, else counted now and stored; a live edition's, counted now.
    With a session, it must hold no lock on the edition's row: storing is its own
    transaction."""
    return tallies_of(db, [edition])[edition.id]


def tallies_of(db: Engine | Session, editions: list[Edition], *, summary: bool = False) -> dict[int, Tallies]:
    """tallies_for each edition, the stored ones read in one query; with `summary`, only
    their counts, retries and skip reasons are read back (the dashboard's lines)."""
    if isinstance(db, Engine):
        with session_scope(db) as session:
            return tallies_of(session, editions, summary=summary)
    finished = {e.id: e.finished_at for e in editions if is_finished(e)}
    found = _stored(db, finished, summary=summary)
    large = [e.id for e in editions if not is_finished(e) and e.total > LIVE_SNAPSHOT_FROM]
    found.update(stored_live(db, large, summary=summary))
    out: dict[int, Tallies] = {}
    for edition in editions:
        if edition.id in found:
            out[edition.id] = found[edition.id]
        elif edition.id in finished:
            out[edition.id] = make_tallies(_engine_of(db), edition.id) or count_tallies(db, edition.id)
        elif edition.id in large:
            out[edition.id] = _snapshot(_engine_of(db), edition.id)
        else:
            out[edition.id] = count_tallies(db, edition.id)
    return out


def stored_live(session: Session, edition_ids: list[int], *, summary: bool) -> dict[int, Tallies]:
    """The live editions' counts stored less than LIVE_MAX_AGE ago."""
    if not edition_ids:
        return {}
    read = Tallies.from_summary if summary else Tallies.from_body
    since = utcnow() - LIVE_MAX_AGE
    out = {}
    for edition_id, made_at, text in session.execute(
            select(T.c.edition_id, T.c.made_at, T.c.summary if summary else T.c.body)
            .where(T.c.edition_id.in_(edition_ids), T.c.finished_at.is_(None))):
        if _aware(made_at) >= since and (tallies := read(edition_id, text, _aware(made_at))) is not None:
            out[edition_id] = tallies
    return out


def refresh_live(engine: Engine) -> list[int]:
    """Count the large live editions whose stored count is older than LIVE_REFRESH (or
    missing), so that no look at them has to: the ids counted."""
    since = utcnow() - LIVE_REFRESH
    with session_scope(engine) as session:
        fresh = select(T.c.edition_id).where(T.c.finished_at.is_(None), T.c.made_at >= since)
        due = list(session.scalars(select(Edition.id).where(
            Edition.state.in_([EditionState.SENDING.value, EditionState.PAUSED.value, EditionState.HELD.value]),
            Edition.total > LIVE_SNAPSHOT_FROM, Edition.id.not_in(fresh)).order_by(Edition.id)))
    for edition_id in due:
        _snapshot(engine, edition_id)
    return due


def _snapshot(engine: Engine, edition_id: int) -> Tallies:
    """Count a large live edition now and store the count for the next LIVE_MAX_AGE. Not
    under the edition's lock (the sending workers update its row): a change racing the
    count can be missing from it, for as long as the count is shown, and its time says
    how old it is."""
    with session_scope(engine) as session:
        tallies = count_tallies(session, edition_id)
    try:
        with session_scope(engine) as session:
            session.execute(delete(T).where(T.c.edition_id == edition_id, T.c.finished_at.is_(None)))
            session.execute(insert(T).values(edition_id=edition_id, finished_at=None, made_at=tallies.made_at,
                                             summary=tallies.summary(), body=tallies.body()))
    except IntegrityError:
        pass  # another look stored one at the same moment, or the edition finished: theirs stand
    return tallies


def _engine_of(session: Session) -> Engine:
    bind = session.get_bind()
    return bind.engine if isinstance(bind, Connection) else bind


def _stored(session: Session, wanted: dict[int, datetime], *, summary: bool = False) -> dict[int, Tallies]:
    """The stored tallies made for these finished_at (edition id -> finished_at)."""
    if not wanted:
        return {}
    out = {}
    read = Tallies.from_summary if summary else Tallies.from_body
    for edition_id, finished_at, made_at, text in session.execute(
            select(T.c.edition_id, T.c.finished_at, T.c.made_at, T.c.summary if summary else T.c.body)
            .where(T.c.edition_id.in_(list(wanted)))):
        if _aware(finished_at) == wanted[edition_id]:
            tallies = read(edition_id, text, _aware(made_at))
            if tallies is not None:
                out[edition_id] = tallies
    return out


def make_tallies(engine: Engine, edition_id: int) -> Tallies | None:
    """Count a finished edition's tallies and store them (replacing any made for an
    earlier finish), in one transaction holding the edition's row; the stored ones when
    a concurrent call stored them first. None when there is no such edition; a live
    edition's are counted, not stored."""
    with session_scope(engine) as session:
        _lock(session, [edition_id])
        row = session.execute(select(Edition.state, Edition.finished_at).where(Edition.id == edition_id)).first()
        if row is None:
            return None
        if row.state not in FINISHED or row.finished_at is None:
            return count_tallies(session, edition_id)
        stored = _stored(session, {edition_id: row.finished_at})
        if stored:
            return stored[edition_id]
        tallies = count_tallies(session, edition_id)
        session.execute(delete(T).where(T.c.edition_id == edition_id))
        try:
            with session.begin_nested():
                session.execute(insert(T).values(edition_id=edition_id, finished_at=row.finished_at,
                                                 made_at=tallies.made_at, summary=tallies.summary(),
                                                 body=tallies.body()))
        except IntegrityError:
            # Stored by a concurrent call that the lock did not hold back: theirs stand.
            log.info("edition %s: tallies stored by another process meanwhile", edition_id)
        return tallies


def store_at_finish(engine: Engine, edition_id: int) -> None:
    """make_tallies for an edition that just finished, so its first look is quick. Never
    raises: the page counts them at its first look instead."""
    try:
        make_tallies(engine, edition_id)
    except Exception:  # noqa: BLE001 - the edition is finished either way; only a page waits longer
        log.exception("edition %s: its tallies could not be stored; the console counts them when asked",
                      edition_id)


def forget(session: Session, edition_ids) -> None:
    """Delete the stored tallies of these editions, in the caller's transaction (the one
    that changes their rows), holding their rows as make_tallies does."""
    ids = sorted({i for i in edition_ids if i is not None})
    if not ids:
        return
    _lock(session, ids)
    session.execute(delete(T).where(T.c.edition_id.in_(ids)))


def _lock(session: Session, edition_ids: list[int]) -> None:
    """Hold the editions' rows until the transaction ends. PostgreSQL: FOR NO KEY UPDATE,
    which the foreign key checks of rows inserted for the edition (KEY SHARE) pass by.
    SQLite: a write, which takes the database's write lock before anything is read."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(select(Edition.id).where(Edition.id.in_(edition_ids)).order_by(Edition.id)
                        .with_for_update(key_share=True))
    else:
        session.execute(update(Edition).where(Edition.id.in_(edition_ids)).values(probes=Edition.probes)
                        .execution_options(synchronize_session=False))


def editions_with_rows_of(session: Session, subscriber_id: int) -> list[int]:
    """The editions with a row for this reader. One probe of the (edition, subscriber)
    key per edition: deliveries has no index on the reader alone."""
    return list(session.scalars(select(Edition.id).where(
        select(D.c.id).where(D.c.edition_id == Edition.id, D.c.subscriber_id == subscriber_id).exists())))


def count_tallies(session: Session, edition_id: int, *, minutes: bool = True, reasons: bool = True) -> Tallies:
    """Count the edition's tallies now; without `minutes` or `reasons`, those left empty."""
    main = _main_pass(session, edition_id)
    counted = main["counts"]
    return Tallies(
        edition_id=edition_id, counts=counted, retry_scheduled=main["retry"], skips=main["skips"],
        codes=main["codes"], sets=main["sets"], first_id=main["first_id"], span=main["span"],
        minutes=_minutes(session, edition_id) if minutes and main["span"] is not None else {},
        reasons=_reasons(session, edition_id) if reasons and counted[FAILED] else [])


def state_order(state: str) -> int:
    return STATES.index(state) if state in STATES else len(STATES)


def _main_pass(session: Session, edition_id: int) -> dict:
    """One grouped read of the edition's rows: counts by state (failed ones with a retry
    time apart, skipped ones by reason), by state and SMTP code, by region set and state,
    the sending span and the edition's first row."""
    retry = and_(D.c.state == FAILED, D.c.next_attempt_at.is_not(None)).label("retry")
    columns = [D.c.state, D.c.last_code, retry, D.c.regions, D.c.skip_reason]
    query = (select(*columns, func.count(), func.min(D.c.sent_at), func.max(D.c.sent_at), func.min(D.c.id))
             .where(D.c.edition_id == edition_id).group_by(*columns))
    counts, codes, sets, skips = dict.fromkeys(STATES, 0), {}, {}, {}
    retrying, first, span = 0, None, None
    for state, code, is_retry, regions, skip, n, low, high, first_id in session.execute(query).all():
        counts[state] = counts.get(state, 0) + n
        retrying += n if is_retry else 0
        if state == SKIPPED:
            skips[str(skip)] = skips.get(str(skip), 0) + n
        if code is not None:
            codes[(state, code)] = codes.get((state, code), 0) + n
        by = sets.setdefault(regions, {})
        by[state] = by.get(state, 0) + n
        first = first_id if first is None else min(first, first_id)
        low, high = _aware(low), _aware(high)
        if low is not None:
            span = (min(span[0], low), max(span[1], high)) if span else (low, high)
    return {"counts": counts, "retry": retrying, "skips": dict(sorted(skips.items())),
            "codes": sorted(((s, c, n) for (s, c), n in codes.items()), key=lambda t: (state_order(t[0]), t[1])),
            "sets": sets, "first_id": first, "span": span}


def _aware(value):
    # A MIN/MAX or a truncation of the UTC column may come back as a plain value: either
    # way, an aware UTC datetime.
    if value is None or isinstance(value, datetime) and value.tzinfo is not None:
        return value
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=UTC)


def _minutes(session: Session, edition_id: int) -> dict[datetime, int]:
    """Messages sent per minute, counted in SQL: as many rows as minutes with a send."""
    if session.get_bind().dialect.name == "postgresql":
        minute = func.date_trunc("minute", D.c.sent_at).label("minute")
    else:
        minute = func.strftime("%Y-%m-%d %H:%M:00", D.c.sent_at).label("minute")
    found = session.execute(select(minute, func.count()).where(D.c.edition_id == edition_id,
                                                               D.c.sent_at.is_not(None)).group_by(minute)).all()
    return {_aware(at): n for at, n in found}


def _reasons(session: Session, edition_id: int) -> list[FailureReason]:
    reply = func.substr(D.c.last_reply, 1, REPLY_CHARS).label("reply")
    rows = func.count().label("rows")
    found = session.execute(
        select(D.c.last_code, reply, rows, func.count(D.c.next_attempt_at))
        .where(D.c.edition_id == edition_id, D.c.state == FAILED)
        .group_by(D.c.last_code, reply).order_by(rows.desc(), D.c.last_code, reply).limit(REASONS)).all()
    return [FailureReason(code, text, n, scheduled) for code, text, n, scheduled in found]
