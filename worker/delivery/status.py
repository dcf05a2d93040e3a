"""An edition's accounting: counts by state, skip reason and SMTP code."""

from __future__ import annotations

from sqlalchemy import Engine, func, select

from worker.store.db import session_scope
from worker.store.models import Delivery, DeliveryState, Edition, Subscriber

D = Delivery.__table__
STATES = [s.value for s in DeliveryState]


def edition_status(engine: Engine, edition: Edition, *, list_unknown: int = 50) -> dict:
    with session_scope(engine) as session:
        by_state = dict(session.execute(
            select(D.c.state, func.count()).where(D.c.edition_id == edition.id).group_by(D.c.state)).all())
        skips = dict(session.execute(
            select(D.c.skip_reason, func.count()).where(D.c.edition_id == edition.id,
                                                        D.c.state == DeliveryState.SKIPPED.value)
            .group_by(D.c.skip_reason)).all())
        codes = session.execute(
            select(D.c.state, D.c.last_code, func.count()).where(D.c.edition_id == edition.id,
                                                                 D.c.last_code.is_not(None))
            .group_by(D.c.state, D.c.last_code)).all()
        retrying = session.scalar(select(func.count()).select_from(D).where(
            D.c.edition_id == edition.id, D.c.state == DeliveryState.FAILED.value,
            D.c.next_attempt_at.is_not(None))) or 0
        unknown = session.execute(
            select(D.c.id, Subscriber.email, D.c.last_reply, D.c.updated_at)
            .join(Subscriber, Subscriber.id == D.c.subscriber_id)
            .where(D.c.edition_id == edition.id, D.c.state == DeliveryState.UNKNOWN.value)
            .order_by(D.c.id).limit(list_unknown)).all()
    return {
        "edition": edition.key,
        "label": edition.label,
        "state": edition.state,
        "reason": edition.reason,
        "note": edition.note,
        "window": [edition.window_start.isoformat(), edition.window_end.isoformat()],
        "created_at": edition.created_at.isoformat(),
        "finished_at": edition.finished_at.isoformat() if edition.finished_at else None,
        "total": edition.total,
        "counts": {state: by_state.get(state, 0) for state in STATES},
        "retry_scheduled": retrying,
        "skip_reasons": {str(k): v for k, v in sorted(skips.items(), key=lambda kv: str(kv[0]))},
        "smtp_codes": {f"{state} {code}": n for state, code, n in sorted(codes)},
        "unknown": [{"delivery": r.id, "email": r.email, "reason": r.last_reply,
                     "at": r.updated_at.isoformat()} for r in unknown],
    }


def recent_editions(engine: Engine, limit: int = 20) -> list[Edition]:
    with session_scope(engine) as session:
        return list(session.scalars(select(Edition).order_by(Edition.created_at.desc(), Edition.id.desc())
                                    .limit(limit)))
