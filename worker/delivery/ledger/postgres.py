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
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta

from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError

from worker.delivery.ledger.book import ACTIVE, SKIPPED, Claim, Pending, PortableLedger, claims, record_values
from worker.delivery.ledger.rows import FAILED, PENDING, SENDING, D
from worker.store.models import EditionState

# The portable ledger's conditions (rows.due, rows.edition_sending), as this statement spells them.
_DUE = f"(d.state = '{PENDING}' OR d.state = '{FAILED}' AND d.next_attempt_at <= %(now)s::timestamp)"
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
    autocommitted statement on the raw connection."""

    def __init__(self, engine: Engine, **kwargs) -> None:
        super().__init__(engine, **kwargs)
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

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        self._raw.autocommit = False
        try:
            with self.conn.begin():
                yield
        finally:
            self._restore_autocommit()

    def claim(self, delivery_ids: Sequence[int], *, now: datetime, lease: timedelta) -> dict[int, Claim]:
        if not self._one_statement():
            return super().claim(delivery_ids, now=now, lease=lease)
        items, self.pending = self.pending, []
        return self._record_and_claim(items, delivery_ids, now=now, lease=lease)

    def flush(self) -> None:
        if not self.pending:
            return
        if not self._one_statement():
            super().flush()
            return
        items, self.pending = self.pending, []
        self._record_and_claim(items, [], now=items[-1].now, lease=timedelta(0))

    def close(self) -> None:
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

    def _record_and_claim(self, items: list[Pending], delivery_ids: Sequence[int], *, now: datetime,
                          lease: timedelta) -> dict[int, Claim]:
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
        written = {row[0] for row in rows if row[2] is None}
        self.late.extend(item.delivery_id for item in items if item.delivery_id not in written)
        return claims(row for row in rows if row[2] is not None)

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
