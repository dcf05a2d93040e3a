"""The audit trail: every change an operator made, through the console or the command line.

`audit` writes one row in the caller's transaction (so a change and its record commit or
roll back together) naming the current actor (actor.py); with nobody acting (the worker,
beat) it writes nothing: the trail is of people. `newsletter audit` and the console read it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, Engine, insert, select
from sqlalchemy.orm import Session

from worker.clock import utcnow
from worker.operators.actor import current_actor
from worker.store.db import session_scope
from worker.store.models import AuditEvent

MAX_TARGET = 400
MAX_DETAIL = 2000


@dataclass(frozen=True)
class AuditEntry:
    at: datetime
    who: str
    via: str
    action: str
    target: str | None
    detail: str | None


def audit(db: Session | Connection | Engine, action: str, target: str | None = None,
          detail: str | None = None, *, at: datetime | None = None) -> bool:
    """Record `action` on `target` by whoever is acting now; False (nothing written) when
    nobody is. `db` is the caller's session or connection, or an engine for a change
    already committed."""
    actor = current_actor()
    if actor is None:
        return False
    values = {"at": at or utcnow(), "who": actor.who, "via": actor.via, "action": action[:48],
              "target": target[:MAX_TARGET] if target else None,
              "detail": detail[:MAX_DETAIL] if detail else None}
    if isinstance(db, Engine):
        with db.begin() as connection:
            connection.execute(insert(AuditEvent.__table__), [values])
    else:
        db.execute(insert(AuditEvent.__table__), [values])
    return True


def audit_since(engine: Engine, since: datetime | None = None, *, limit: int = 1000,
                before_id: int | None = None) -> list[tuple[int, AuditEntry]]:
    """The newest first, at most `limit`, from `since` on; `before_id` pages further back."""
    query = select(AuditEvent).order_by(AuditEvent.id.desc()).limit(limit)
    if since is not None:
        query = query.where(AuditEvent.at >= since)
    if before_id is not None:
        query = query.where(AuditEvent.id < before_id)
    with session_scope(engine) as session:
        return [(row.id, AuditEntry(at=row.at, who=row.who, via=row.via, action=row.action, target=row.target,
                                    detail=row.detail)) for row in session.scalars(query)]
