"""A batch's claims and results: the `Ledger` interface and its portable implementation."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from functools import cache
from typing import Protocol

from sqlalchemy import Connection, Engine, bindparam, case, update

from worker.delivery.ledger.rows import PENDING, SENDING, D, due, edition_sending
from worker.delivery.outcome import Outcome, SendResult, backoff, enhanced_code
from worker.readers.history import change_status
from worker.store.models import ChangeVia, DeliveryState, Subscriber, SubscriberStatus

ACTIVE, SKIPPED = SubscriberStatus.ACTIVE.value, DeliveryState.SKIPPED.value


class ClaimState(StrEnum):
    CLAIMED = "claimed"  # this worker may send it now
    LOST = "lost"        # another worker has it, or the edition stopped sending
    SKIPPED = "skipped"  # the subscriber left since planning: `reason` says how


@dataclass(frozen=True)
class Claim:
    state: ClaimState
    attempts: int = 0
    reason: str | None = None


LOST = Claim(ClaimState.LOST)


class Ledger(Protocol):
    """What a delivery lane needs from the ledger. One per lane."""

    late: list[int]  # results that arrived after the row was declared unknown

    def claim(self, delivery_ids: Sequence[int], *, now: datetime, lease: timedelta) -> dict[int, Claim]: ...
    def record(self, delivery_id: int, *, result: SendResult, message_id: str | None, attempts: int,
               now: datetime) -> None: ...
    def skip(self, delivery_id: int, *, reason: str, now: datetime) -> None: ...
    def flush(self) -> None: ...
    def reconnect(self) -> None: ...
    def close(self) -> None: ...


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
               D.c.claimed_by == bindparam("worker"), due(now), edition_sending())
        .values(state=case((active, SENDING), else_=SKIPPED),
                skip_reason=case((active, None), else_=Subscriber.status),
                attempts=case((active, D.c.attempts + 1), else_=D.c.attempts),
                claimed_by=case((active, D.c.claimed_by), else_=None),
                lease_until=case((active, bindparam("lease_until", type_=D.c.lease_until.type)), else_=None),
                updated_at=now)
        .returning(D.c.id, D.c.attempts, D.c.state, D.c.skip_reason)
    )


def claims(rows) -> dict[int, Claim]:
    """Claims from (id, attempts, state, skip_reason) rows; ids not among them were lost."""
    return {delivery_id: Claim(ClaimState.CLAIMED, attempts) if state == SENDING
            else Claim(ClaimState.SKIPPED, reason=reason or "deleted")
            for delivery_id, attempts, state, reason in rows}


RECORD_COLUMNS = ("state", "last_code", "last_reply", "sent_at", "message_id", "next_attempt_at")


@cache
def _record_stmt(shift_attempts: bool):
    values = {c: bindparam(c, type_=D.c[c].type) for c in RECORD_COLUMNS}
    values.update(claimed_by=None, lease_until=None, batch_token=None, enqueued_at=None,
                  updated_at=bindparam("now", type_=D.c.updated_at.type))
    if shift_attempts:
        values["attempts"] = D.c.attempts - 1
    return (update(D).where(D.c.id == bindparam("did"), D.c.state == SENDING, D.c.claimed_by == bindparam("worker"))
            .values(**values).returning(D.c.subscriber_id))


def record_values(result: SendResult, *, message_id: str | None, attempts: int, max_attempts: int,
                  retry_base: float, now: datetime) -> dict:
    """The columns a result sets on its row."""
    values = {"state": DeliveryState.FAILED.value, "last_code": result.code,
              "last_reply": result.summary[:1000] or None, "sent_at": None, "message_id": None,
              "next_attempt_at": None}
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


@dataclass(frozen=True)
class Pending:
    """A result not written yet: with the pipeline it goes with the lane's next claim."""

    delivery_id: int
    result: SendResult
    message_id: str | None
    attempts: int
    now: datetime

    @property
    def changes_more_than_its_row(self) -> bool:
        # A bounce also marks the subscriber; a sender refusal un-counts the attempt.
        return self.result.outcome in (Outcome.PERMANENT, Outcome.SENDER)


def refusal_note(result: SendResult) -> str:
    """What a reader's history keeps of a refusal at send: its codes, not its words (a
    reply often quotes the address; the ledger row keeps it, and a purge deletes both)."""
    enhanced = enhanced_code(result.reply)
    codes = [str(result.code) if result.code else "", ".".join(map(str, enhanced)) if enhanced else ""]
    return " ".join(["refused at send", *filter(None, codes)])


class PortableLedger:
    """Claims and results in ordinary transactions, on any database SQLAlchemy speaks.

    With `pipeline`, results are written in the same transaction as the next claim:
    one commit per claim instead of two. A sent row then stays `sending` for one more
    step (composing the next message); a crash there leaves it `unknown` (reported,
    never re-sent) instead of `sent`. Results that change more than the row (bounces,
    pauses) are written at once.
    """

    def __init__(self, engine: Engine, *, worker: str, max_attempts: int, retry_base: float,
                 pipeline: bool = True) -> None:
        self.engine = engine
        self.conn: Connection | None = None  # during a transaction
        self.worker = worker
        self.max_attempts = max_attempts
        self.retry_base = retry_base
        self.pipeline = pipeline
        self.pending: list[Pending] = []
        self.late: list[int] = []

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        """A pooled connection for one transaction, given back after it: a lane holds none
        between its transactions, so the database's connections do not grow with the lanes."""
        with self.engine.connect() as conn:
            self.conn = conn
            try:
                with conn.begin():
                    yield
            finally:
                self.conn = None

    def reconnect(self) -> None:
        """After a database error: nothing to do, as each transaction takes a connection of
        its own (the pool drops a broken one); what is waiting to be written stays waiting."""

    def claim(self, delivery_ids: Sequence[int], *, now: datetime, lease: timedelta) -> dict[int, Claim]:
        """Move leased rows to `sending`; rows not returned were lost to someone else."""
        with self._transaction():
            written = self._write_pending()
            rows = self.conn.execute(_claim_stmt(), {"dids": list(delivery_ids), "worker": self.worker,
                                                     "now": now, "lease_until": now + lease})
            result = claims(rows)
        self._written(written)
        return result

    def record(self, delivery_id: int, *, result: SendResult, message_id: str | None, attempts: int,
               now: datetime) -> None:
        self.pending.append(Pending(delivery_id, result, message_id, attempts, now))
        if not self.pipeline or result.outcome not in (Outcome.SENT, Outcome.TEMPORARY):
            self.flush()

    def flush(self) -> None:
        if self.pending:
            with self._transaction():
                written = self._write_pending()
            self._written(written)

    def unclaim(self, delivery_ids: Sequence[int], *, now: datetime) -> None:
        """Claimed rows that were not sent after all (the batch stopped): pending again."""
        if not delivery_ids:
            return
        with self._transaction():
            written = self._write_pending()
            self.conn.execute(
                update(D).where(D.c.id.in_(list(delivery_ids)), D.c.claimed_by == self.worker, D.c.state == SENDING)
                .values(state=PENDING, attempts=D.c.attempts - 1, updated_at=now)
            )
        self._written(written)

    def skip(self, delivery_id: int, *, reason: str, now: datetime) -> None:
        with self._transaction():
            written = self._write_pending()
            self.conn.execute(
                update(D).where(D.c.id == delivery_id, D.c.claimed_by == self.worker, D.c.state == SENDING)
                .values(state=SKIPPED, skip_reason=reason, claimed_by=None, lease_until=None, updated_at=now)
            )
        self._written(written)

    def close(self) -> None:
        self.flush()

    def _write_pending(self) -> tuple[int, list[int]]:
        """Write the waiting results inside the caller's transaction: (how many, the late ones).
        They stay waiting until that transaction commits (`_written`): a result the relay
        took is never dropped with a statement that failed. The readers a relay refused for
        good are marked bounced, with their history, in two statements for all of them."""
        late: list[int] = []
        refused: dict[int, Pending] = {}
        for item in self.pending:
            subscriber_id = self._write(self.conn, item)
            if subscriber_id is None:
                late.append(item.delivery_id)
            elif item.result.outcome is Outcome.PERMANENT:
                refused[subscriber_id] = item
        if refused:
            # One instant for all: a refusal is written as soon as it is recorded, so a
            # flush seldom holds two, and then they are moments apart.
            change_status(self.conn, refused.keys(), SubscriberStatus.BOUNCED, was=SubscriberStatus.ACTIVE,
                          via=ChangeVia.REFUSED_AT_SEND, at=max(item.now for item in refused.values()),
                          note={subscriber_id: refusal_note(item.result) for subscriber_id, item in refused.items()})
        return len(self.pending), late

    def _written(self, written: tuple[int, list[int]]) -> None:
        count, late = written
        del self.pending[:count]
        self.late.extend(late)

    def _write(self, conn: Connection, item: Pending) -> int | None:
        """One result, inside the caller's transaction: its row's subscriber, or None if
        the row was no longer ours (the reconciler had already called it `unknown`)."""
        # enqueued_at is cleared: no queued batch holds this row any more, so a
        # retry is handed out as soon as it is due.
        params = {"did": item.delivery_id, "worker": self.worker, "now": item.now,
                  **record_values(item.result, message_id=item.message_id, attempts=item.attempts,
                                  max_attempts=self.max_attempts, retry_base=self.retry_base, now=item.now)}
        return conn.execute(_record_stmt(item.result.outcome is Outcome.SENDER), params).scalar()
