"""The ledger: one row per (edition, subscriber), above the transport.

Guarantee (the only one the rest of the system relies on):

    A message is handed to a sender only after its row moved from `pending`
    (or a `failed` row that is due) to `sending` in a committed compare-and-set
    UPDATE that this worker won. The row leaves `sending` only when the sender's
    answer is recorded, or, if that never happens, when the reconciler finds
    its lease expired and marks it `unknown`, which is never re-sent.

So two workers never both send a row (the claim is atomic), a lost or
repeated broker message sends nothing twice (the second claim finds the row
no longer pending), and a row nobody claimed stays `pending` until the
reconciler hands it out again. The one ambiguous window is the time between
the claim's commit and the record's commit, one SMTP transaction long: a
crash there leaves the reader with zero or one copy, the row ends `unknown`
and is reported.

Two leases: a *batch lease* (claimed_by/lease_until on pending rows) says
which task is working through a batch so other tasks and the reconciler leave
those rows alone; the *send lease* on a `sending` row bounds the ambiguous
window for the reconciler.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cache

from sqlalchemy import Connection, Engine, and_, bindparam, case, exists, func, or_, select, update
from sqlalchemy.exc import DBAPIError

from worker.delivery.outcome import Outcome, SendResult, backoff
from worker.store.db import session_scope
from worker.store.models import (
    Delivery,
    DeliveryState,
    Edition,
    EditionState,
    Subscriber,
    SubscriberStatus,
)

D = Delivery.__table__
PENDING, SENDING = DeliveryState.PENDING.value, DeliveryState.SENDING.value
FAILED = DeliveryState.FAILED.value


@dataclass(frozen=True)
class Leased:
    """A row this worker holds the batch lease for, with what composing needs."""

    id: int
    subscriber_id: int
    regions: tuple[str, ...]
    email: str
    name: str | None


def _due(now: datetime):
    """Rows that may be sent now: pending, or failed with a retry time that has come."""
    return or_(D.c.state == PENDING, and_(D.c.state == FAILED, D.c.next_attempt_at <= now))


def _edition_sending(edition_id: int):
    return exists().where(Edition.id == edition_id, Edition.state == EditionState.SENDING.value)


def lease_batch(engine: Engine, *, edition_id: int, ids: Sequence[int], worker: str, now: datetime,
                lease: timedelta) -> list[Leased]:
    """Take the batch lease on the due rows among `ids` that no live lease holds.

    Rows this same worker still holds (a retried task in the same process) count as free.
    """
    free = or_(D.c.lease_until.is_(None), D.c.lease_until < now, D.c.claimed_by == worker)
    candidates = select(D.c.id).where(
        D.c.id.in_(list(ids)), D.c.edition_id == edition_id, _due(now), free
    )
    with session_scope(engine) as session:
        if engine.dialect.name == "postgresql":
            # Rows another worker is updating right now are skipped, not waited for.
            candidates = candidates.with_for_update(skip_locked=True)
        stmt = (
            update(D)
            .where(D.c.id.in_(candidates.scalar_subquery()), _edition_sending(edition_id))
            .values(claimed_by=worker, lease_until=now + lease, updated_at=now)
            .returning(D.c.id)
        )
        won = [row[0] for row in session.execute(stmt)]
        if not won:
            return []
        rows = session.execute(
            select(D.c.id, D.c.subscriber_id, D.c.regions, Subscriber.email, Subscriber.name)
            .join(Subscriber, Subscriber.id == D.c.subscriber_id)
            .where(D.c.id.in_(won))
            .order_by(D.c.id)
        ).all()
    return [Leased(r.id, r.subscriber_id, tuple(r.regions.split()), r.email, r.name) for r in rows]


@dataclass(frozen=True)
class Claim:
    state: str  # 'claimed', 'lost', or the skip reason ('unsubscribed', 'bounced', ...)
    attempts: int = 0


ACTIVE, SKIPPED = SubscriberStatus.ACTIVE.value, DeliveryState.SKIPPED.value


@cache
def _claim_stmt():
    """Built once: statement construction costs more than running it (~0.3 ms each).

    One statement: rows of active subscribers go to `sending`; rows whose
    subscriber has left since planning go to `skipped` with the status as the
    reason, so an unsubscribe that lands while the edition is sending takes effect here.
    """
    now = bindparam("now", type_=D.c.updated_at.type)
    active = Subscriber.status == ACTIVE
    return (
        update(D)
        .where(Subscriber.id == D.c.subscriber_id, D.c.id.in_(bindparam("dids", expanding=True)),
               D.c.claimed_by == bindparam("worker"),
               or_(D.c.state == PENDING, and_(D.c.state == FAILED, D.c.next_attempt_at <= now)),
               _edition_sending_for_row())
        .values(state=case((active, SENDING), else_=SKIPPED),
                skip_reason=case((active, None), else_=Subscriber.status),
                attempts=case((active, D.c.attempts + 1), else_=D.c.attempts),
                claimed_by=case((active, D.c.claimed_by), else_=None),
                lease_until=case((active, bindparam("lease_until", type_=D.c.lease_until.type)), else_=None),
                updated_at=now)
        .returning(D.c.id, D.c.attempts, D.c.state, D.c.skip_reason)
    )


def _claims(rows) -> dict[int, Claim]:
    return {delivery_id: Claim("claimed", attempts) if state == SENDING else Claim(reason or "deleted")
            for delivery_id, attempts, state, reason in rows}


def _edition_sending_for_row():
    return exists().where(Edition.id == D.c.edition_id, Edition.state == EditionState.SENDING.value)


_RECORD_COLUMNS = ("state", "last_code", "last_reply", "sent_at", "message_id", "next_attempt_at")


@cache
def _record_stmt(shift_attempts: bool):
    values = {c: bindparam(c, type_=D.c[c].type) for c in _RECORD_COLUMNS}
    values.update(claimed_by=None, lease_until=None, enqueued_at=None,
                  updated_at=bindparam("now", type_=D.c.updated_at.type))
    if shift_attempts:
        values["attempts"] = D.c.attempts - 1
    return (update(D).where(D.c.id == bindparam("did"), D.c.state == SENDING, D.c.claimed_by == bindparam("worker"))
            .values(**values).returning(D.c.subscriber_id))


def _record_values(result: SendResult, *, message_id: str | None, attempts: int, max_attempts: int,
                   retry_base: float, now: datetime) -> dict:
    """The columns a result sets on its row."""
    values = {"state": FAILED, "last_code": result.code, "last_reply": result.summary[:1000] or None,
              "sent_at": None, "message_id": None, "next_attempt_at": None}
    outcome = result.outcome
    if outcome is Outcome.SENT:
        values.update(state=DeliveryState.SENT.value, sent_at=now, message_id=message_id)
    elif outcome is Outcome.UNKNOWN:
        values.update(state=DeliveryState.UNKNOWN.value, message_id=message_id)
    elif outcome is Outcome.PERMANENT:
        values.update(state=DeliveryState.BOUNCED.value)
    elif outcome is Outcome.SENDER:
        # Not the subscriber's fault: the attempt is not counted and the row waits for resume.
        values.update(state=PENDING)
    elif outcome is Outcome.TEMPORARY and attempts < max_attempts:
        values.update(next_attempt_at=now + backoff(attempts, base_seconds=retry_base))
    # else: temporary with attempts used up, or rejected: final `failed`
    return values


def record(conn: Connection, *, delivery_id: int, worker: str, result: SendResult, message_id: str | None,
           attempts: int, max_attempts: int, retry_base: float, now: datetime) -> bool:
    """Write the sender's answer (inside a transaction on `conn`).

    False if the row was no longer ours: the reconciler had already called it `unknown`.
    """
    # enqueued_at is cleared: no queued batch holds this row any more, so a
    # retry is handed out as soon as it is due.
    params = {"did": delivery_id, "worker": worker, "now": now,
              **_record_values(result, message_id=message_id, attempts=attempts, max_attempts=max_attempts,
                               retry_base=retry_base, now=now)}
    outcome = result.outcome
    done = conn.execute(_record_stmt(outcome is Outcome.SENDER), params).first()
    if done is None:
        return False
    if outcome is Outcome.PERMANENT:
        conn.execute(
            update(Subscriber).where(Subscriber.id == done.subscriber_id,
                                     Subscriber.status == SubscriberStatus.ACTIVE.value)
            .values(status=SubscriberStatus.BOUNCED.value, status_changed_at=now)
        )
    return True


# PostgreSQL: the results of the previous messages and the claim of the next ones
# in one autocommitted statement, one round trip: the same two writes as
# _record_stmt and _claim_stmt (whose meaning it must keep; the tests run both
# paths with the same assertions), committed together as the pipelined
# transaction would commit them. Written as SQL because SQLAlchemy's own
# per-execution work costs more than PostgreSQL's. The results come as one JSON
# object keyed by delivery id, read per row: no join for PostgreSQL to set up.
_PG_RECORD_AND_CLAIM = f"""
WITH recorded AS (
    UPDATE deliveries AS d
    SET state = %(recorded)s::jsonb -> d.id::text ->> 'state',
        last_code = (%(recorded)s::jsonb -> d.id::text ->> 'last_code')::int,
        last_reply = %(recorded)s::jsonb -> d.id::text ->> 'last_reply',
        sent_at = (%(recorded)s::jsonb -> d.id::text ->> 'sent_at')::timestamp,
        message_id = %(recorded)s::jsonb -> d.id::text ->> 'message_id',
        next_attempt_at = (%(recorded)s::jsonb -> d.id::text ->> 'next_attempt_at')::timestamp,
        updated_at = (%(recorded)s::jsonb -> d.id::text ->> 'now')::timestamp,
        claimed_by = NULL, lease_until = NULL, enqueued_at = NULL
    WHERE d.id = ANY(%(recorded_ids)s::bigint[]) AND d.state = '{SENDING}' AND d.claimed_by = %(worker)s
    RETURNING d.id
), claimed AS (
    UPDATE deliveries AS d
    SET state = CASE WHEN s.status = '{ACTIVE}' THEN '{SENDING}' ELSE '{SKIPPED}' END,
        skip_reason = CASE WHEN s.status = '{ACTIVE}' THEN NULL ELSE s.status END,
        attempts = CASE WHEN s.status = '{ACTIVE}' THEN d.attempts + 1 ELSE d.attempts END,
        claimed_by = CASE WHEN s.status = '{ACTIVE}' THEN d.claimed_by END,
        lease_until = CASE WHEN s.status = '{ACTIVE}' THEN %(lease_until)s::timestamp END,
        updated_at = %(now)s::timestamp
    FROM subscribers AS s
    WHERE s.id = d.subscriber_id AND d.id = ANY(%(claim_ids)s::bigint[]) AND d.claimed_by = %(worker)s
      AND (d.state = '{PENDING}' OR d.state = '{FAILED}' AND d.next_attempt_at <= %(now)s::timestamp)
      AND (SELECT e.state FROM editions AS e WHERE e.id = d.edition_id) = '{EditionState.SENDING.value}'
    RETURNING d.id, d.attempts, d.state, d.skip_reason
)
SELECT id, NULL::int, NULL::varchar, NULL::varchar FROM recorded
UNION ALL SELECT * FROM claimed
"""


def _int_array(values) -> str:
    return "{" + ",".join(str(int(v)) for v in values) + "}"


def _naive_utc(value: datetime | None) -> datetime | None:
    """What the column type stores (naive UTC; a naive value is refused, not guessed)."""
    return D.c.updated_at.type.process_bind_param(value, None)


class BatchLedger:
    """One connection for one batch.

    With `pipeline`, results are written in the same transaction as the next claim:
    one commit per claim instead of two. A sent row then stays `sending` for one more
    step (composing the next message); a crash there leaves it `unknown` (reported,
    never re-sent) instead of `sent`. Results that change more than the row (bounces,
    pauses) are written at once.

    Claims normally take one row (NEWSLETTER_LEDGER_GROUP=1). A larger group claims
    that many rows in one statement: fewer commits, but a crash can then leave up to
    a group of rows `unknown`, including rows not yet sent (reported, never sent).

    On PostgreSQL the usual step (write the previous results, claim the next rows)
    is one autocommitted statement (`single_statement`; the tests also run the
    transaction path there); everything else runs in ordinary transactions.
    """

    def __init__(self, engine: Engine, *, worker: str, max_attempts: int, retry_base: float,
                 pipeline: bool = True, single_statement: bool | None = None) -> None:
        self.conn = engine.connect()
        self.worker = worker
        self.max_attempts = max_attempts
        self.retry_base = retry_base
        self.pipeline = pipeline
        self._deferred: list[dict] = []
        self.late: list[int] = []  # results that arrived after the row was declared unknown
        self._raw = None  # the DBAPI connection, when the step is one statement (PostgreSQL)
        if engine.dialect.name == "postgresql" if single_statement is None else single_statement:
            self._raw = self.conn.connection.dbapi_connection
            try:
                self._raw.autocommit = True
                # Once prepared, the statement's generic plan (by primary key) is the right one; left
                # to choose, PostgreSQL keeps planning it afresh for each message (0.15 ms of its CPU).
                self._execute("SET plan_cache_mode = force_generic_plan")
            except BaseException:
                self.conn.invalidate()
                self.conn.close()
                raise

    def _execute(self, sql: str, params: dict | None = None) -> list:
        """Run SQL on the raw connection, with errors raised as SQLAlchemy raises them (so the
        task's retry on database errors applies) and a dropped connection invalidated."""
        dbapi = self.conn.dialect.loaded_dbapi
        try:
            with self._raw.cursor() as cursor:
                cursor.execute(sql, params)
                return cursor.fetchall() if cursor.description else []
        except dbapi.Error as exc:
            if self.conn.dialect.is_disconnect(exc, self._raw, None):
                self.conn.invalidate()
            raise DBAPIError.instance(sql, params, exc, dbapi.Error) from exc

    @contextmanager
    def _transaction(self):
        if self._raw is not None:
            self._raw.autocommit = False
        try:
            with self.conn.begin():
                yield
        finally:
            if self._raw is not None:
                self._restore_autocommit()

    def _restore_autocommit(self) -> None:
        # The single statement must never run inside a transaction left open: its claim
        # would not be committed before the send. If autocommit cannot come back (the
        # connection broke, or an exception cut a query short), the connection is dropped.
        try:
            if not self._raw.closed:
                self._raw.autocommit = True
                return
        except Exception:  # noqa: BLE001 - the original exception is the one to report
            pass
        self.conn.invalidate()

    def claim(self, delivery_ids: Sequence[int], *, now: datetime, lease: timedelta) -> dict[int, Claim]:
        """Move leased rows to `sending`; rows not returned were lost to someone else."""
        if self._raw is not None and self._fast(self._deferred):
            items, self._deferred = self._deferred, []
            return self._record_and_claim(items, delivery_ids, now=now, lease=lease)
        with self._transaction():
            self._write_deferred()
            rows = self.conn.execute(_claim_stmt(), {"dids": list(delivery_ids), "worker": self.worker,
                                                     "now": now, "lease_until": now + lease})
            return _claims(rows)

    def record(self, delivery_id: int, *, result: SendResult, message_id: str | None, attempts: int,
               now: datetime) -> None:
        self._deferred.append(dict(delivery_id=delivery_id, result=result, message_id=message_id,
                                   attempts=attempts, now=now))
        if not self.pipeline or result.outcome not in (Outcome.SENT, Outcome.TEMPORARY):
            self.flush()

    def unclaim(self, delivery_ids: Sequence[int], *, now: datetime) -> None:
        """Claimed rows that were not sent after all (the batch stopped): pending again."""
        if not delivery_ids:
            return
        with self._transaction():
            self._write_deferred()
            self.conn.execute(
                update(D).where(D.c.id.in_(list(delivery_ids)), D.c.claimed_by == self.worker, D.c.state == SENDING)
                .values(state=PENDING, attempts=D.c.attempts - 1, updated_at=now)
            )

    def flush(self) -> None:
        if not self._deferred:
            return
        if self._raw is not None and self._fast(self._deferred):
            items, self._deferred = self._deferred, []
            self._record_and_claim(items, [], now=items[-1]["now"], lease=timedelta(0))
            return
        with self._transaction():
            self._write_deferred()

    @staticmethod
    def _fast(items: list[dict]) -> bool:
        # Bounces also change the subscriber and sender refusals un-count the attempt:
        # those take the transaction path.
        return all(item["result"].outcome not in (Outcome.PERMANENT, Outcome.SENDER) for item in items)

    def _record_and_claim(self, items: list[dict], delivery_ids: Sequence[int], *, now: datetime,
                          lease: timedelta) -> dict[int, Claim]:
        recorded = {}
        for item in items:
            values = _record_values(item["result"], message_id=item["message_id"], attempts=item["attempts"],
                                    max_attempts=self.max_attempts, retry_base=self.retry_base, now=item["now"])
            values.update(id=item["delivery_id"], now=item["now"])
            recorded[str(item["delivery_id"])] = {k: _naive_utc(v).isoformat() if isinstance(v, datetime) else v
                                                   for k, v in values.items()}
        # JSON and array literals: psycopg's adaptation of Python lists costs ten times more.
        params = {"recorded": json.dumps(recorded), "recorded_ids": _int_array(item["delivery_id"] for item in items),
                  "claim_ids": _int_array(delivery_ids), "worker": self.worker, "now": _naive_utc(now),
                  "lease_until": _naive_utc(now + lease)}
        rows = self._execute(_PG_RECORD_AND_CLAIM, params)
        recorded = {row[0] for row in rows if row[2] is None}
        self.late.extend(item["delivery_id"] for item in items if item["delivery_id"] not in recorded)
        return _claims(row for row in rows if row[2] is not None)

    def _write_deferred(self) -> None:
        items, self._deferred = self._deferred, []
        for item in items:
            if not record(self.conn, worker=self.worker, max_attempts=self.max_attempts,
                          retry_base=self.retry_base, **item):
                self.late.append(item["delivery_id"])

    def skip(self, delivery_id: int, *, reason: str, now: datetime) -> None:
        with self._transaction():
            self._write_deferred()
            self.conn.execute(
                update(D).where(D.c.id == delivery_id, D.c.claimed_by == self.worker, D.c.state == SENDING)
                .values(state=DeliveryState.SKIPPED.value, skip_reason=reason, claimed_by=None,
                        lease_until=None, updated_at=now)
            )

    def close(self) -> None:
        try:
            self.flush()
        finally:
            try:
                if self._raw is not None and not self._raw.closed:
                    self._raw.execute("RESET plan_cache_mode")  # the pool hands the connection out again
                    self._raw.autocommit = False
            except Exception:  # noqa: BLE001 - a broken connection is not given back to the pool
                self.conn.invalidate()
            finally:
                self.conn.close()


def release(engine: Engine, *, ids: Sequence[int], worker: str, now: datetime) -> int:
    """Give back batch leases on rows this worker did not get to; they stay due."""
    if not ids:
        return 0
    with session_scope(engine) as session:
        result = session.execute(
            update(D).where(D.c.id.in_(list(ids)), D.c.claimed_by == worker, D.c.state != SENDING)
            .values(claimed_by=None, lease_until=None, enqueued_at=None, updated_at=now)
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

    The caller marks each batch with `mark_enqueued` once the broker took it: a batch
    the broker refused stays ready for the next dispatch, not for `redispatch_after`.
    """
    free = or_(D.c.lease_until.is_(None), D.c.lease_until < now)
    fresh = or_(D.c.enqueued_at.is_(None), D.c.enqueued_at < now - redispatch_after)
    with session_scope(engine) as session:
        ids = list(session.scalars(
            select(D.c.id).where(D.c.edition_id == edition_id, _due(now), free, fresh).order_by(D.c.id)
        ))
    return [ids[i:i + batch_size] for i in range(0, len(ids), batch_size)]


def mark_enqueued(engine: Engine, *, ids: Sequence[int], now: datetime) -> None:
    """Handed to the broker now: if the message is lost, the rows come back after the
    redispatch interval; a duplicate message is harmless (the claim decides)."""
    with session_scope(engine) as session:
        for start in range(0, len(ids), 1000):
            session.execute(update(D).where(D.c.id.in_(list(ids[start:start + 1000]))).values(enqueued_at=now))


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
