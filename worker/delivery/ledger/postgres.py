"""The ledger on PostgreSQL: the usual step in one autocommitted statement.

Writing the previous results and claiming the next rows is one statement, one
round trip: the same two writes as the portable ledger's record and claim
statements (whose meaning it must keep; the tests run both implementations on
PostgreSQL with the same assertions), committed together as the pipelined
transaction would commit them. It is SQL text on the raw connection because
SQLAlchemy's own per-execution work costs more than PostgreSQL's. Anything
else (bounces, pauses, skips) takes the portable transaction path.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError

from worker.delivery.ledger.book import ACTIVE, SKIPPED, Claim, Pending, PortableLedger, claims, record_values
from worker.delivery.ledger.rows import FAILED, PENDING, SENDING, D
from worker.store.models import EditionState

# The portable ledger's conditions (rows.due, rows.edition_sending), as this statement spells them.
_DUE = (f"(d.state = '{PENDING}' AND (d.due_at IS NULL OR d.due_at <= %(now)s::timestamp)"
        f" OR d.state = '{FAILED}' AND d.next_attempt_at <= %(now)s::timestamp)")
_EDITION_SENDING = f"(SELECT e.state FROM editions AS e WHERE e.id = d.edition_id) = '{EditionState.SENDING.value}'"

# The results come as one JSON object keyed by delivery id, read per row: no join for
# PostgreSQL to set up.
_RECORD_AND_CLAIM = f"""
WITH recorded AS (
    UPDATE deliveries AS d
    SET state = %(recorded)s::jsonb -> d.id::text ->> 'state',
        last_code = (%(recorded)s::jsonb -> d.id::text ->> 'last_code')::int,
        last_reply = %(recorded)s::jsonb -> d.id::text ->> 'last_reply',
        sent_at = (%(recorded)s::jsonb -> d.id::text ->> 'sent_at')::timestamp,
        message_id = %(recorded)s::jsonb -> d.id::text ->> 'message_id',
        next_attempt_at = (%(recorded)s::jsonb -> d.id::text ->> 'next_attempt_at')::timestamp,
        updated_at = (%(recorded)s::jsonb -> d.id::text ->> 'now')::timestamp,
        claimed_by = NULL, lease_until = NULL, batch_token = NULL, enqueued_at = NULL
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
      AND {_DUE} AND {_EDITION_SENDING}
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


class PostgresLedger(PortableLedger):
    """The portable ledger, with its usual step (results and the next claim) in one
    autocommitted statement on the raw connection; given a `StatementGroup`, in one
    statement shared with the batch's other lanes."""

    def __init__(self, engine: Engine, *, group: StatementGroup | None = None, **kwargs) -> None:
        super().__init__(engine, **kwargs)
        self.group = group
        # With a group, the usual step runs on the group's connection and anything else in
        # a pooled transaction (the portable ledger's); alone, on a connection of its own.
        if group is None:
            self.conn = engine.connect()
            self._set_up()

    def _set_up(self) -> None:
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

    def reconnect(self) -> None:
        """A fresh connection after a database error (the old one is dropped); what is
        waiting to be written stays waiting. Raises while the database is still away."""
        if self.group is not None:
            return  # the group reconnects its own; transactions take theirs from the pool
        if not self.conn.closed:
            self.conn.invalidate()
            self.conn.close()
        self.conn = self.engine.connect()
        self._set_up()

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        if self.group is not None:
            with super()._transaction():
                yield
            return
        self._raw.autocommit = False
        try:
            with self.conn.begin():
                yield
        finally:
            self._restore_autocommit()

    def claim(self, delivery_ids: Sequence[int], *, now: datetime, lease: timedelta) -> dict[int, Claim]:
        if not self._one_statement():
            return super().claim(delivery_ids, now=now, lease=lease)
        return self._step(delivery_ids, now=now, lease=lease)

    def flush(self) -> None:
        if not self.pending:
            return
        if not self._one_statement():
            super().flush()
            return
        self._step([], now=self.pending[-1].now, lease=timedelta(0))

    def close(self) -> None:
        if self.group is not None:
            self.flush()
            return
        try:
            self.flush()
        finally:
            try:
                if not self._raw.closed:
                    self._raw.execute("RESET plan_cache_mode")  # the pool hands the connection out again
                    self._raw.autocommit = False
            except Exception:  # noqa: BLE001 - a broken connection is not given back to the pool
                self.conn.invalidate()
            finally:
                self.conn.close()

    def _one_statement(self) -> bool:
        return not any(item.changes_more_than_its_row for item in self.pending)

    def _step(self, delivery_ids: Sequence[int], *, now: datetime, lease: timedelta) -> dict[int, Claim]:
        # The results leave `pending` only once their statement ran: a failed one keeps them.
        items = list(self.pending)
        run = self.group.run if self.group is not None else self._record_and_claim
        claimed, written = run(items, delivery_ids, now=now, lease=lease)
        del self.pending[:len(items)]
        self.late.extend(item.delivery_id for item in items if item.delivery_id not in written)
        return claimed

    def _record_and_claim(self, items: list[Pending], delivery_ids: Sequence[int], *, now: datetime,
                          lease: timedelta) -> tuple[dict[int, Claim], set[int]]:
        """(claims, ids of the results written): a result not written arrived after its
        row was declared unknown."""
        recorded = {}
        for item in items:
            values = record_values(item.result, message_id=item.message_id, attempts=item.attempts,
                                   max_attempts=self.max_attempts, retry_base=self.retry_base, now=item.now)
            values.update(id=item.delivery_id, now=item.now)
            recorded[str(item.delivery_id)] = {k: _naive_utc(v).isoformat() if isinstance(v, datetime) else v
                                               for k, v in values.items()}
        # JSON and array literals: psycopg's adaptation of Python lists costs ten times more.
        params = {"recorded": json.dumps(recorded), "recorded_ids": _int_array(item.delivery_id for item in items),
                  "claim_ids": _int_array(delivery_ids), "worker": self.worker, "now": _naive_utc(now),
                  "lease_until": _naive_utc(now + lease)}
        rows = self._execute(_RECORD_AND_CLAIM, params)
        return claims(row for row in rows if row[2] is not None), {row[0] for row in rows if row[2] is None}

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


@dataclass
class _Request:
    items: list[Pending]
    delivery_ids: Sequence[int]
    now: datetime
    lease: timedelta
    done: bool = False
    result: tuple[dict[int, Claim], set[int]] | None = None
    error: BaseException | None = None


class StatementGroup:
    """Group commit for the lanes of one batch: one statement, one round trip and one
    WAL flush for what several lanes ask at the same moment.

    A lane that finds no statement in flight runs its own at once, with whatever the
    other lanes queued meanwhile; lanes that ask while one runs wait for it to end,
    and the first of them runs the next for all of them. So an idle lane never waits
    for company, and under load each statement carries up to one step per lane. Each
    lane still sends only after its claim has committed: its window stays one message.
    """

    def __init__(self, engine: Engine, *, worker: str, max_attempts: int, retry_base: float) -> None:
        self._book = PostgresLedger(engine, worker=worker, max_attempts=max_attempts, retry_base=retry_base)
        self._cond = threading.Condition()
        self._queue: list[_Request] = []
        self._busy = False
        self._broken = False

    def run(self, items: list[Pending], delivery_ids: Sequence[int], *, now: datetime,
            lease: timedelta) -> tuple[dict[int, Claim], set[int]]:
        request = _Request(items, delivery_ids, now, lease)
        with self._cond:
            self._queue.append(request)
            while self._busy and not request.done:
                self._cond.wait()
            if not request.done:
                self._busy = True
                batch, self._queue = self._queue, []
        if not request.done:
            self._run(batch)
        if request.error is not None:
            raise request.error
        return request.result

    def _run(self, batch: list[_Request]) -> None:
        try:
            if self._broken:
                self._book.reconnect()
                self._broken = False
            claimed, written = self._book._record_and_claim(
                [item for r in batch for item in r.items], [i for r in batch for i in r.delivery_ids],
                now=max(r.now for r in batch), lease=max(r.lease for r in batch))
            for r in batch:
                r.result = ({i: claimed[i] for i in r.delivery_ids if i in claimed},
                            {item.delivery_id for item in r.items} & written)
        except BaseException as exc:  # noqa: BLE001 - every lane of the statement gets the error
            # Its connection may be gone (the database restarted): the next statement opens another.
            self._broken = True
            for r in batch:
                r.error = exc
        finally:
            with self._cond:
                for r in batch:
                    r.done = True
                self._busy = False
                self._cond.notify_all()

    def close(self) -> None:
        self._book.close()
