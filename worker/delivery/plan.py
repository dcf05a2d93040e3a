"""Editions: plan one (ledger rows in bulk, inside the database), pause, resume, finish."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Engine, delete, func, insert, literal, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from worker.delivery.ledger import has_open_rows
from worker.delivery.local_time import LocalSend, due_times
from worker.delivery.tallies import forget, store_at_finish
from worker.digest import Window
from worker.digest.queries import fetch_window_stories
from worker.errors import UsageError
from worker.store.db import session_scope
from worker.store.models import (
    Delivery,
    DeliveryState,
    Edition,
    EditionState,
    Subscriber,
    SubscriberStatus,
    Variant,
)

D = Delivery.__table__


@dataclass(frozen=True)
class Planned:
    edition_id: int
    key: str
    created: bool


def active_region_sets(session: Session) -> list[tuple[str, int]]:
    """Each ordered region set ('RU UA') active subscribers follow, with how many follow
    it; most followed first. There are few sets, however many readers."""
    return [(regions, count) for regions, count in session.execute(
        select(Subscriber.regions, func.count()).where(Subscriber.status == SubscriberStatus.ACTIVE.value)
        .group_by(Subscriber.regions).order_by(func.count().desc(), Subscriber.regions))]


def region_sets_with_stories(session, window: Window, region_sets: list[str], *, wider: bool = False) -> set[str]:
    """Which ordered region sets ('RU UA') get a digest: those with at least one story in
    the window; with `wider` (NEWSLETTER_QUIET_WEEK=wider), every set once the window has
    any story at all, a quiet set getting the site's most opened."""
    tagged = {region for story in fetch_window_stories(session, window) for region in story.regions}
    if wider and tagged:
        return set(region_sets)
    return {regions for regions in region_sets if tagged & set(regions.split())}


def recipients_now(engine: Engine, window: Window, *, wider: bool = False) -> int:
    """Active subscribers with at least one story stored in their regions: who a plan made
    now would send to (and so who approving a held edition sends to)."""
    with session_scope(engine) as session:
        sets = active_region_sets(session)
        with_stories = region_sets_with_stories(session, window, [regions for regions, _ in sets], wider=wider)
    return sum(count for regions, count in sets if regions in with_stories)


def plan_edition(engine: Engine, *, key: str, kind: str, window: Window, now: datetime,
                 note: str | None = None, hold: str | None = None, local: LocalSend | None = None,
                 wider: bool = False) -> Planned:
    """Create the edition and its ledger rows in one transaction; idempotent by key.

    The recipient set is fixed here: every active subscriber gets a row with
    their region set as it is now. Rows for region sets without stories are
    `skipped` with reason `no-stories` straight away, unless `wider` (a quiet week's
    readers get the site's most opened stories). With `hold` (the reasons), the
    edition is planned `held`: nothing is handed out until approve_edition. With
    `local`, each row is due at the send time in its reader's zone
    (worker/delivery/local_time.py); without, every row is due at once.
    """
    try:
        with session_scope(engine) as session:
            edition = Edition(key=key, kind=kind, label=window.label, window_start=window.start,
                              window_end=window.end, note=note, created_at=now,
                              state=(EditionState.HELD if hold else EditionState.SENDING).value, reason=hold)
            session.add(edition)
            session.flush()
            edition.total = _plan_rows(session, edition.id, window=window, now=now, local=local, wider=wider)
            edition_id = edition.id
        _analyze(engine)
        # Nobody to send to (no subscriber, or no stories in anyone's regions): done now.
        finish_if_done(engine, edition_id, now)
        return Planned(edition_id, key, True)
    except IntegrityError:
        # Another beat, reconciler or operator planned it first: use theirs.
        with session_scope(engine) as session:
            existing = session.scalar(select(Edition.id).where(Edition.key == key))
        if existing is None:
            raise
        return Planned(existing, key, False)


def _plan_rows(session: Session, edition_id: int, *, window: Window, now: datetime, local: LocalSend | None,
               wider: bool = False) -> int:
    """The edition's ledger rows from the active subscribers and the stories stored now;
    region sets without stories skipped `no-stories`. Returns the row count."""
    due_at = due_times(session, local).column() if local else literal(None, D.c.due_at.type)
    # INSERT ... SELECT: a million subscribers never pass through Python.
    session.execute(insert(D).from_select(
        ["edition_id", "subscriber_id", "regions", "state", "attempts", "updated_at", "due_at"],
        select(literal(edition_id), Subscriber.id, Subscriber.regions,
               literal(DeliveryState.PENDING.value), literal(0), literal(now, D.c.updated_at.type), due_at)
        .where(Subscriber.status == SubscriberStatus.ACTIVE.value)
        # Rows of one region set get neighbouring ids, so a batch mostly needs one variant.
        .order_by(Subscriber.regions, Subscriber.id),
    ))
    sets = list(session.scalars(select(D.c.regions).where(D.c.edition_id == edition_id).distinct()))
    empty = sorted(set(sets) - region_sets_with_stories(session, window, sets, wider=wider))
    for start in range(0, len(empty), 500):
        session.execute(
            update(D).where(D.c.edition_id == edition_id, D.c.regions.in_(empty[start:start + 500]))
            .values(state=DeliveryState.SKIPPED.value, skip_reason="no-stories")
        )
    return session.scalar(select(func.count()).select_from(D).where(D.c.edition_id == edition_id)) or 0


def _analyze(engine: Engine) -> None:
    """Fresh statistics after the bulk insert. Until autovacuum gets to it (a minute or
    more), PostgreSQL plans each batch's lease as if the edition had a handful of rows and
    scans all of them: 90 ms per batch of 200 at 20,000 rows instead of 1 ms."""
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            conn.exec_driver_sql("ANALYZE deliveries, subscribers")
            conn.commit()


def record_skipped_edition(engine: Engine, *, key: str, window: Window, reason: str, now: datetime) -> bool:
    """A week that was never sent, on record with why. False if the key already exists."""
    try:
        with session_scope(engine) as session:
            session.add(Edition(key=key, kind="weekly", label=window.label, window_start=window.start,
                                window_end=window.end, state=EditionState.SKIPPED.value, reason=reason,
                                created_at=now, finished_at=now))
        return True
    except IntegrityError:
        return False


def find_edition(engine: Engine, key: str) -> Edition | None:
    with session_scope(engine) as session:
        return session.scalar(select(Edition).where(Edition.key == key))


def get_edition(engine: Engine, edition_id: int) -> Edition | None:
    with session_scope(engine) as session:
        return session.get(Edition, edition_id)


def _move(engine: Engine, edition_id: int, *, source: EditionState, target: EditionState, **values) -> bool:
    """Compare-and-set on the edition's state; True if this call made the change."""
    with session_scope(engine) as session:
        result = session.execute(
            update(Edition).where(Edition.id == edition_id, Edition.state == source.value)
            .values(state=target.value, **values)
        )
        return bool(result.rowcount)


def pause_edition(engine: Engine, edition_id: int, reason: str) -> bool:
    """Stop handing out batches. Only a sending edition pauses; True if it did."""
    return _move(engine, edition_id, source=EditionState.SENDING, target=EditionState.PAUSED, reason=reason)


def resume_edition(engine: Engine, edition_id: int) -> bool:
    """Paused to sending. Batches that met the pause handed nothing back to the broker
    and may hold no lease: their rows' hand-out marks are cleared, so the next dispatch
    (the caller's, or the reconciler's) hands them out at once instead of after
    NEWSLETTER_REDISPATCH_SECONDS."""
    if not _move(engine, edition_id, source=EditionState.PAUSED, target=EditionState.SENDING, reason=None,
                 resume_at=None, probes=0):
        return False
    with session_scope(engine) as session:
        session.execute(update(D).where(D.c.edition_id == edition_id, D.c.state.in_(
            [DeliveryState.PENDING.value, DeliveryState.FAILED.value]), D.c.claimed_by.is_(None))
            .values(enqueued_at=None))
    return True


def approve_edition(engine: Engine, edition_id: int, *, now: datetime, who: str,
                    local: LocalSend | None = None, wider: bool = False) -> bool:
    """Held to sending, the hold kept in the note for the record; True if this call did it
    (a second approve, or one racing it, finds it no longer held).

    Who gets what is decided now, not at the hold: the held rows (never handed out) and any
    render are dropped and planned again from the subscribers and stories stored now, in
    the same transaction as the state change, so no tick sees the edition sending with the
    old rows. This is what `newsletter preview --week` showed before the approval. With
    `local`, rows are due at their reader's send time (those whose hour has passed: at once).
    """
    with session_scope(engine) as session:
        edition = session.get(Edition, edition_id)
        if edition is None or edition.state != EditionState.HELD.value:
            return False
        record = f"held ({edition.reason}); approved by {who} at {now.isoformat()}"
        note = f"{edition.note}; {record}" if edition.note else record
        window = Window.of_edition(edition)
        moved = session.execute(
            update(Edition).where(Edition.id == edition_id, Edition.state == EditionState.HELD.value)
            .values(state=EditionState.SENDING.value, reason=None, note=note)).rowcount
        if not moved:
            return False
        session.execute(delete(D).where(D.c.edition_id == edition_id))
        session.execute(delete(Variant).where(Variant.edition_id == edition_id))
        total = _plan_rows(session, edition_id, window=window, now=now, local=local, wider=wider)
        session.execute(update(Edition).where(Edition.id == edition_id).values(total=total))
    _analyze(engine)
    finish_if_done(engine, edition_id, now)  # nothing to send (every row skipped): done now, as plan_edition does
    return True


def discard_edition(engine: Engine, edition_id: int, *, now: datetime, who: str) -> bool:
    """Held to skipped, never sent; its open rows are skipped with reason `discarded`."""
    with session_scope(engine) as session:
        edition = session.get(Edition, edition_id)
        if edition is None or edition.state != EditionState.HELD.value:
            return False
        reason = f"discarded by {who} at {now.isoformat()} (held: {edition.reason})"
        moved = session.execute(
            update(Edition).where(Edition.id == edition_id, Edition.state == EditionState.HELD.value)
            .values(state=EditionState.SKIPPED.value, reason=reason, finished_at=now)).rowcount
        if moved:
            session.execute(update(D).where(D.c.edition_id == edition_id, D.c.state == DeliveryState.PENDING.value)
                            .values(state=DeliveryState.SKIPPED.value, skip_reason="discarded", updated_at=now))
    if moved:
        store_at_finish(engine, edition_id)
    return bool(moved)


def finish_if_done(engine: Engine, edition_id: int, now: datetime) -> bool:
    """A sending edition with no open row left becomes done, and its tallies are counted
    and stored (once: only the call that moved it), so the console reads them from then
    on; a failure there is logged and leaves the edition done."""
    if has_open_rows(engine, edition_id=edition_id):
        return False
    if not _move(engine, edition_id, source=EditionState.SENDING, target=EditionState.DONE, finished_at=now):
        return False
    store_at_finish(engine, edition_id)
    return True


def retry_failed(engine: Engine, edition_id: int, now: datetime) -> int:
    """Final `failed` rows go back to pending with fresh attempts; the edition sends again."""
    with session_scope(engine) as session:
        count = session.execute(
            update(D).where(D.c.edition_id == edition_id, D.c.state == DeliveryState.FAILED.value)
            .values(state=DeliveryState.PENDING.value, attempts=0, next_attempt_at=None, claimed_by=None,
                    lease_until=None, enqueued_at=None, updated_at=now)
        ).rowcount or 0
        if count:
            forget(session, [edition_id])
            session.execute(update(Edition).where(Edition.id == edition_id, Edition.state == EditionState.DONE.value)
                            .values(state=EditionState.SENDING.value, finished_at=None))
        return count


def next_force_key(engine: Engine, key: str) -> str:
    with session_scope(engine) as session:
        taken = set(session.scalars(select(Edition.key).where(Edition.key.like(f"{key}-force-%"))))
    n = 2
    while f"{key}-force-{n}" in taken:
        n += 1
    return f"{key}-force-{n}"


def require_edition(engine: Engine, key: str) -> Edition:
    edition = find_edition(engine, key)
    if edition is None:
        close = _close_key(engine, key)
        hint = f"; did you mean {close}?" if close else ""
        raise UsageError(f"no edition {key!r}{hint} (see `newsletter status`)")
    return edition


def _close_key(engine: Engine, key: str) -> str | None:
    """The edition meant by a week given as a key: `2025-W05` is `weekly-2025-W05`. (Not
    a fuzzy match: keys of neighbouring weeks differ by one character, and suggesting
    last week's edition for this week's would mislead.)"""
    weekly = f"weekly-{key.strip()}"
    return weekly if find_edition(engine, weekly) is not None else None
