"""The ledger: one row per (edition, subscriber), above the transport.

Guarantee (the only one the rest of the system relies on):

    A message is handed to a sender only after its row moved from `pending`
    (or a `failed` row that is due) to `sending` in a committed compare-and-set
    UPDATE that this worker won. The row leaves `sending` only when the sender's
    answer is recorded, or, if that never happens, when the reconciler finds
    its lease expired (or its worker dead, see worker/delivery/liveness.py) and
    marks it `unknown`, which is never re-sent.

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

`rows` holds what happens to rows outside a batch's claims (leases, hand-out
marks, expiry); `book` the `Ledger` a delivery lane claims and records through,
in its portable form; `postgres` the same with its usual step in one statement.
"""

from __future__ import annotations

from sqlalchemy import Engine

from worker.delivery.ledger.book import LOST, Claim, ClaimState, Ledger, PortableLedger
from worker.delivery.ledger.postgres import PostgresLedger, StatementGroup
from worker.delivery.ledger.rows import (
    Leased,
    claimed_before,
    dispatchable,
    expire_sending,
    has_open_rows,
    lease_batch,
    mark_enqueued,
    release,
    unmark_enqueued,
)

__all__ = [
    "LOST", "Claim", "ClaimState", "Leased", "Ledger", "PortableLedger", "PostgresLedger", "StatementGroup",
    "claimed_before", "dispatchable", "expire_sending", "has_open_rows", "lease_batch", "mark_enqueued",
    "open_group", "open_ledger", "release", "unmark_enqueued",
]


def open_ledger(engine: Engine, *, worker: str, max_attempts: int, retry_base: float, pipeline: bool = True,
                one_statement: bool | None = None, group: StatementGroup | None = None) -> Ledger:
    """A lane's ledger: the one-statement implementation on PostgreSQL, the portable one
    elsewhere (`one_statement=False` takes the portable one on PostgreSQL too, as the
    tests do to hold the two to the same assertions). Lanes given the same `group`
    share their statements (see StatementGroup)."""
    if engine.dialect.name == "postgresql" if one_statement is None else one_statement:
        return PostgresLedger(engine, worker=worker, max_attempts=max_attempts, retry_base=retry_base,
                              pipeline=pipeline, group=group)
    return PortableLedger(engine, worker=worker, max_attempts=max_attempts, retry_base=retry_base, pipeline=pipeline)


def open_group(engine: Engine, *, worker: str, max_attempts: int, retry_base: float) -> StatementGroup | None:
    """A statement group for a batch's lanes where the database has the one-statement step."""
    if engine.dialect.name != "postgresql":
        return None
    return StatementGroup(engine, worker=worker, max_attempts=max_attempts, retry_base=retry_base)
