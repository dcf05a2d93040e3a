"""The ledger's rows outside a batch's claims: batch leases, hand-out marks, expiry.

Each condition the statements share is defined once here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Engine, and_, exists, func, or_, select, update

from worker.digest import RegionSet
from worker.store.db import session_scope
from worker.store.models import Delivery, DeliveryState, Edition, EditionState, Subscriber

D = Delivery.__table__
PENDING, SENDING, FAILED = DeliveryState.PENDING.value, DeliveryState.SENDING.value, DeliveryState.FAILED.value


def due(now):
    """Rows that may be sent now: pending whose hour has come (the send time in the
    reader's zone; NULL is at once), or failed with a retry time that has come. A failed
    row's hour came before its first attempt. `now` is a datetime or a bound parameter."""
    return or_(and_(D.c.state == PENDING, or_(D.c.due_at.is_(None), D.c.due_at <= now)),
               and_(D.c.state == FAILED, D.c.next_attempt_at <= now))


def waiting(now):
    """Pending rows whose hour has not come: open, but not handed out yet."""
    return and_(D.c.state == PENDING, D.c.due_at > now)


def edition_sending(edition_id=D.c.edition_id):
    """The row's edition (or the given one) is sending: a paused edition claims nothing."""
    return exists().where(Edition.id == edition_id, Edition.state == EditionState.SENDING.value)


def unleased(now):
    return or_(D.c.lease_until.is_(None), D.c.lease_until < now)


@dataclass(frozen=True)
class Leased:
    """A row this worker holds the batch lease for, with what composing needs."""

    id: int
    subscriber_id: int
    regions: tuple[str, ...]
    email: str
    name: str | None
    link_key: str | None
    # The reader's language as it is when the row is sent; None: NEWSLETTER_LANGUAGE.
    language: str | None = None


def lease_batch(engine: Engine, *, edition_id: int, ids: Sequence[int], worker: str, now: datetime,
                lease: timedelta, token: str | None = None) -> list[Leased]:
    """Take the batch lease on the due rows among `ids` that no live lease holds.

    Rows this same worker still holds (a retried task in the same process) count as free,
    and so do rows leased for the same `token` (the task's id) by any process: the lease
    follows the batch, so a retried or redelivered task takes its rows back instead of
    waiting out a lease nobody works on. Taking a row over is safe because it changes
    `claimed_by`: the claim of the process that held it (a compare-and-set on it) loses.
    """
    mine = D.c.claimed_by == worker
    if token is not None:
        mine = or_(mine, D.c.batch_token == token)
    candidates = select(D.c.id).where(
        D.c.id.in_(list(ids)), D.c.edition_id == edition_id, due(now), or_(unleased(now), mine)
    )
    with session_scope(engine) as session:
        if engine.dialect.name == "postgresql":
            # Rows another worker is updating right now are skipped, not waited for.
            candidates = candidates.with_for_update(skip_locked=True)
        stmt = (
            update(D)
            .where(D.c.id.in_(candidates.scalar_subquery()), edition_sending(edition_id))
            .values(claimed_by=worker, lease_until=now + lease, batch_token=token, updated_at=now)
            .returning(D.c.id)
        )
        won = [row[0] for row in session.execute(stmt)]
        if not won:
            return []
        rows = session.execute(
            select(D.c.id, D.c.subscriber_id, D.c.regions, Subscriber.email, Subscriber.name, Subscriber.link_key,
                   Subscriber.language)
            .join(Subscriber, Subscriber.id == D.c.subscriber_id)
            .where(D.c.id.in_(won))
            .order_by(D.c.id)
        ).all()
    return [Leased(r.id, r.subscriber_id, RegionSet.stored(r.regions).codes, r.email, r.name, r.link_key,
                   r.language) for r in rows]


def claimed_before(engine: Engine, *, ids: Sequence[int], worker: str, lease_until: datetime) -> dict[int, int]:
    """Rows among `ids` a claim of this worker for this very lease moved to `sending`, with
    their attempts: a claim whose statement committed but whose reply the database never
    sent (it went down in between). Asked only after such a failure, so the lane sends the
    row it did claim instead of leaving it `sending` to end `unknown`."""
    with session_scope(engine) as session:
        return dict(session.execute(select(D.c.id, D.c.attempts).where(
            D.c.id.in_(list(ids)), D.c.state == SENDING, D.c.claimed_by == worker,
            D.c.lease_until == lease_until)).all())


def release(engine: Engine, *, ids: Sequence[int], worker: str, now: datetime) -> int:
    """Give back batch leases on rows this worker did not get to; they stay due."""
    if not ids:
        return 0
    with session_scope(engine) as session:
        result = session.execute(
            update(D).where(D.c.id.in_(list(ids)), D.c.claimed_by == worker, D.c.state != SENDING)
            .values(claimed_by=None, lease_until=None, batch_token=None, enqueued_at=None, updated_at=now)
        )
        return result.rowcount or 0


def expire_sending(engine: Engine, *, now: datetime, edition_id: int | None = None) -> int:
    """Rows stuck in `sending` past their lease: the worker died mid-transaction. `unknown`."""
    with session_scope(engine) as session:
        stmt = update(D).where(D.c.state == SENDING, D.c.lease_until < now)
        if edition_id is not None:
            stmt = stmt.where(D.c.edition_id == edition_id)
        result = session.execute(stmt.values(
            state=DeliveryState.UNKNOWN.value, claimed_by=None, lease_until=None, updated_at=now,
            last_reply=func.coalesce(D.c.last_reply, "worker lost during the SMTP transaction"),
        ))
        return result.rowcount or 0


def dispatchable(engine: Engine, *, edition_id: int, now: datetime, redispatch_after: timedelta,
                 batch_size: int) -> list[list[int]]:
    """Due rows no batch is working on and not handed to the broker recently, in batches.

    The caller marks each batch with `mark_enqueued` before the broker takes it, and
    unmarks it with `unmark_enqueued` if the broker refuses it: a refused batch stays ready
    for the next dispatch, not for `redispatch_after`. Marking after the publish would race
    the worker: on PostgreSQL its lease skips rows locked by the mark's update, takes nothing,
    and the rows then wait out `redispatch_after` marked as handed out.
    """
    fresh = or_(D.c.enqueued_at.is_(None), D.c.enqueued_at < now - redispatch_after)
    with session_scope(engine) as session:
        ids = list(session.scalars(
            select(D.c.id).where(D.c.edition_id == edition_id, due(now), unleased(now), fresh).order_by(D.c.id)
        ))
    return [ids[i:i + batch_size] for i in range(0, len(ids), batch_size)]


def mark_enqueued(engine: Engine, *, ids: Sequence[int], now: datetime) -> None:
    """Handed to the broker now: if the message is lost, the rows come back after the
    redispatch interval; a duplicate message is harmless (the claim decides)."""
    with session_scope(engine) as session:
        for start in range(0, len(ids), 1000):
            session.execute(update(D).where(D.c.id.in_(list(ids[start:start + 1000]))).values(enqueued_at=now))


def unmark_enqueued(engine: Engine, *, ids: Sequence[int], now: datetime) -> None:
    """The broker refused the batch marked at `now`: its rows are ready for the next
    dispatch. Rows a worker leased or released meanwhile are left as they are."""
    with session_scope(engine) as session:
        for start in range(0, len(ids), 1000):
            session.execute(update(D).where(D.c.id.in_(list(ids[start:start + 1000])), D.c.enqueued_at == now,
                                            D.c.claimed_by.is_(None)).values(enqueued_at=None))


def has_open_rows(engine: Engine, *, edition_id: int) -> bool:
    """Whether any row still needs work: pending, sending, or failed with a retry scheduled.

    Asked after every batch, so it must not cost a scan of the edition (that made
    the cost per message grow with the list). Searched from the last row down:
    batches go out in id order, so while an edition is sending its last rows are
    open and the answer comes after a few rows.
    """
    with engine.connect() as conn:
        return conn.execute(
            select(D.c.id).where(
                D.c.edition_id == edition_id,
                or_(D.c.state.in_([PENDING, SENDING]), and_(D.c.state == FAILED, D.c.next_attempt_at.is_not(None))),
            ).order_by(D.c.id.desc()).limit(1)
        ).first() is not None
