"""An edition's accounting: counts by state, skip reason and SMTP code; and where its
open rows are: why rows failed, which worker holds which rows, what waits for the broker."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, and_, func, or_, select

from worker.clicks import EditionOpens, edition_opens
from worker.delivery.ledger.rows import waiting
from worker.delivery.liveness import alive
from worker.delivery.resolve import resolution_counts
from worker.store.db import session_scope
from worker.store.models import BounceEvent, BounceKind, Delivery, DeliveryState, Edition, EditionState, Subscriber

D = Delivery.__table__
STATES = [s.value for s in DeliveryState]
FAILED, BOUNCED = DeliveryState.FAILED.value, DeliveryState.BOUNCED.value
PENDING, SENDING = DeliveryState.PENDING.value, DeliveryState.SENDING.value
# Reply groups shown per edition: replies that carry a queue id are all different, and
# a screen of them says less than the ten commonest and a count of the rest.
REPLY_GROUPS = 10
# Complaints over messages sent: Gmail's and Yahoo's bulk sender rules ask for under 0.1 %
# and act on 0.3 %.
COMPLAINT_WARN, COMPLAINT_ALARM = 0.001, 0.003
# Bounces over messages tried (refused at RCPT, or bounced after the relay accepted them):
# mailbox providers treat a list bouncing over 2 % as unkept, over 5 % as bought.
BOUNCE_WARN, BOUNCE_ALARM = 0.02, 0.05


@dataclass(frozen=True)
class UnknownRow:
    """A row that ended `unknown`: the server may have accepted it (docs: guarantees)."""

    delivery: int
    email: str
    reason: str | None
    at: datetime


@dataclass(frozen=True)
class EditionStatus:
    """An edition's accounting: what `newsletter status` prints, the operator page shows
    and `--json` writes (`to_json()`, in the keys and order scripts read)."""

    key: str
    label: str
    state: EditionState
    reason: str | None
    note: str | None
    start: datetime
    end: datetime
    created_at: datetime
    finished_at: datetime | None
    total: int
    # Rows by state: every DeliveryState, in its order, zeros included.
    counts: Mapping[str, int]
    # Failed rows with a retry time: still open, unlike the final ones.
    retry_scheduled: int
    skip_reasons: Mapping[str, int]
    # "state code" (e.g. "sent 250") -> rows.
    smtp_codes: Mapping[str, int]
    # The first `list_unknown` unknown rows; `unknown_more` counts the rest (the count is never cut).
    unknown: tuple[UnknownRow, ...]
    unknown_more: int
    # Paused by a run of temporary failures: when it asks the relay again (worker/delivery/relay.py).
    resume_at: datetime | None
    # Late bounces and complaints and the bounce rate (_late_reports), JSON-ready.
    late: Mapping[str, Any]
    # How unknown rows were decided (worker/delivery/resolve.py), JSON-ready.
    resolved: Mapping[str, Any]
    # Opens through the click redirect (worker/clicks.py).
    opens: EditionOpens = EditionOpens()

    @property
    def open_rows(self) -> int:
        """Rows that may still be sent: pending, in an SMTP transaction, or due for a retry."""
        return self.counts[PENDING] + self.counts[SENDING] + self.retry_scheduled

    @property
    def skipped(self) -> int:
        return self.counts[DeliveryState.SKIPPED.value]

    def to_json(self) -> dict[str, Any]:
        return {
            "edition": self.key,
            "label": self.label,
            "state": self.state.value,
            "reason": self.reason,
            "note": self.note,
            "window": [self.start.isoformat(), self.end.isoformat()],
            "created_at": self.created_at.isoformat(),
            "finished_at": _iso(self.finished_at),
            "total": self.total,
            "counts": dict(self.counts),
            "retry_scheduled": self.retry_scheduled,
            "skip_reasons": dict(self.skip_reasons),
            "smtp_codes": dict(self.smtp_codes),
            "unknown": [{"delivery": r.delivery, "email": r.email, "reason": r.reason, "at": r.at.isoformat()}
                        for r in self.unknown],
            "unknown_more": self.unknown_more,
            "resume_at": _iso(self.resume_at),
            "late": self.late,
            "resolved": self.resolved,
            "clicks": {"opened": self.opens.clicks, "discounted": self.opens.discounted,
                       "stories": [{"story": o.story_id, "title": o.title, "url": o.url, "clicks": o.clicks,
                                    "regions": o.regions} for o in self.opens.stories]},
        }


@dataclass(frozen=True)
class Progress:
    """What following an edition needs: its state and how many rows are still open."""

    key: str
    state: EditionState
    total: int
    done: int
    open_rows: int
    # Open rows that are pending for their reader's hour, not yet due.
    waiting_for_hour: int


def edition_status(engine: Engine, edition: Edition, *, list_unknown: int = 50,
                   most_opened: int = 10) -> EditionStatus:
    with session_scope(engine) as session:
        by_state, retrying = _counts(session, edition.id)
        skips = dict(session.execute(
            select(D.c.skip_reason, func.count()).where(D.c.edition_id == edition.id,
                                                        D.c.state == DeliveryState.SKIPPED.value)
            .group_by(D.c.skip_reason)).all())
        codes = session.execute(
            select(D.c.state, D.c.last_code, func.count()).where(D.c.edition_id == edition.id,
                                                                 D.c.last_code.is_not(None))
            .group_by(D.c.state, D.c.last_code)).all()
        unknown = session.execute(
            select(D.c.id, Subscriber.email, D.c.last_reply, D.c.updated_at)
            .join(Subscriber, Subscriber.id == D.c.subscriber_id)
            .where(D.c.edition_id == edition.id, D.c.state == DeliveryState.UNKNOWN.value)
            .order_by(D.c.id).limit(list_unknown)).all()
    return EditionStatus(
        key=edition.key, label=edition.label, state=EditionState(edition.state), reason=edition.reason,
        note=edition.note, start=edition.window_start, end=edition.window_end, created_at=edition.created_at,
        finished_at=edition.finished_at, total=edition.total,
        counts={state: by_state.get(state, 0) for state in STATES},
        retry_scheduled=retrying,
        skip_reasons={str(k): v for k, v in sorted(skips.items(), key=lambda kv: str(kv[0]))},
        smtp_codes={f"{state} {code}": n for state, code, n in sorted(codes)},
        unknown=tuple(UnknownRow(delivery=r.id, email=r.email, reason=r.last_reply, at=r.updated_at)
                      for r in unknown),
        unknown_more=by_state.get(DeliveryState.UNKNOWN.value, 0) - len(unknown),
        resume_at=edition.resume_at,
        late=_late_reports(engine, edition.id, sent=by_state.get(DeliveryState.SENT.value, 0),
                           bounced=by_state.get(BOUNCED, 0)),
        resolved=resolution_counts(engine, edition.id),
        opens=edition_opens(engine, edition.id, most=most_opened),
    )


def _counts(session, edition_id: int) -> tuple[dict[str, int], int]:
    """Rows by state, and the failed ones with a retry scheduled, in one query."""
    retry = and_(D.c.state == FAILED, D.c.next_attempt_at.is_not(None)).label("retry")
    by_state: dict[str, int] = {}
    retrying = 0
    for state, is_retry, n in session.execute(
            select(D.c.state, retry, func.count()).where(D.c.edition_id == edition_id)
            .group_by(D.c.state, retry)).all():
        by_state[state] = by_state.get(state, 0) + n
        retrying += n if is_retry else 0
    return by_state, retrying


def count_in_state(engine: Engine, edition_id: int, state: DeliveryState) -> int:
    """One number, one query: e.g. the failed rows `--retry-failed` would re-queue."""
    with session_scope(engine) as session:
        return session.scalar(select(func.count()).select_from(D).where(
            D.c.edition_id == edition_id, D.c.state == state.value)) or 0


def edition_progress(engine: Engine, edition_id: int, *, now: datetime) -> Progress | None:
    """How far an edition is, cheaply enough to ask twice a second: its state and total
    (one row), and its rows counted as open and waiting for their hour (one grouped
    query). None when there is no such edition."""
    is_open = or_(D.c.state.in_([PENDING, SENDING]),
                  and_(D.c.state == FAILED, D.c.next_attempt_at.is_not(None))).label("is_open")
    later = waiting(now).label("later")
    with session_scope(engine) as session:
        edition = session.execute(select(Edition.key, Edition.state, Edition.total)
                                  .where(Edition.id == edition_id)).first()
        if edition is None:
            return None
        open_rows = later_rows = 0
        for row_open, row_later, n in session.execute(
                select(is_open, later, func.count()).where(D.c.edition_id == edition_id)
                .group_by(is_open, later)).all():
            open_rows += n if row_open else 0
            later_rows += n if row_later else 0
    return Progress(key=edition.key, state=EditionState(edition.state), total=edition.total,
                    done=edition.total - open_rows, open_rows=open_rows, waiting_for_hour=later_rows)


def _late_reports(engine: Engine, edition_id: int, *, sent: int, bounced: int = 0) -> dict:
    """Bounces and complaints heard after the relay accepted the message (worker/bounces),
    each delivery once per kind, and their rates over the messages the relay accepted
    (rows still `sent`, and those a late bounce turned `bounced`); by reason; and the
    edition's bounce rate, at RCPT and late, over the messages tried."""
    with session_scope(engine) as session:
        found = dict(session.execute(
            select(BounceEvent.kind, func.count(BounceEvent.delivery_id.distinct()))
            .where(BounceEvent.edition_id == edition_id).group_by(BounceEvent.kind)).all())
        by_reason = session.execute(
            select(BounceEvent.reason, func.count()).where(BounceEvent.edition_id == edition_id)
            .group_by(BounceEvent.reason).order_by(func.count().desc(), BounceEvent.reason).limit(40)).all()
        reasons: dict[str, int] = {}
        for reason, count in by_reason:  # reports stored before reasons were read have none
            reasons[reason or "undefined"] = reasons.get(reason or "undefined", 0) + count
        late_bounced = session.scalar(
            select(func.count(BounceEvent.delivery_id.distinct()))
            .join(Delivery, Delivery.id == BounceEvent.delivery_id)
            .where(BounceEvent.edition_id == edition_id, BounceEvent.kind == BounceKind.PERMANENT.value,
                   Delivery.state == BOUNCED)) or 0
    counts = {kind.value: found.get(kind.value, 0) for kind in BounceKind}
    accepted = sent + counts[BounceKind.PERMANENT.value]
    rate = {kind: (n / accepted if accepted else 0.0) for kind, n in counts.items()}
    complaints = rate[BounceKind.COMPLAINT.value]
    alert = "alarm" if complaints >= COMPLAINT_ALARM else "warn" if complaints >= COMPLAINT_WARN else None
    return {"accepted": accepted, **counts, "rates": rate, "complaint_alert": alert, "reasons": reasons,
            "bounce_rate": bounce_rate(sent=sent, bounced=bounced, late_bounced=late_bounced)}


def bounce_rate(*, sent: int, bounced: int, late_bounced: int) -> dict:
    """Readers bounced by this edition over the messages tried: refused at RCPT (`bounced`
    rows with no late report) and bounced late."""
    at_rcpt = max(bounced - late_bounced, 0)
    tried = sent + bounced
    rate = (at_rcpt + late_bounced) / tried if tried else 0.0
    alert = "alarm" if rate >= BOUNCE_ALARM else "warn" if rate >= BOUNCE_WARN else None
    return {"tried": tried, "at_rcpt": at_rcpt, "late": late_bounced, "rate": rate, "alert": alert}


def edition_whereabouts(engine: Engine, edition_id: int, *, now: datetime, redispatch_after: timedelta,
                        liveness_timeout: timedelta) -> dict:
    """What the counts do not say, as JSON-ready data:

    - `failures`: failed and bounced rows grouped by their last reply, a failed group
      split into rows with a retry scheduled and final ones;
    - `leases`: rows held by each worker (batch leases on due rows, send leases on rows
      in an SMTP transaction), whether that worker's heartbeat is fresh, and when its
      leases end;
    - `awaiting_broker`: due rows handed to the broker that no worker has taken yet,
      and when the reconciler hands them out again (NEWSLETTER_REDISPATCH_SECONDS);
    - `awaiting_hour`: pending rows whose send time in their reader's zone has not come.
    """
    return {
        "failures": _failures(engine, edition_id),
        "leases": _leases(engine, edition_id, now=now, timeout=liveness_timeout),
        "awaiting_broker": _awaiting_broker(engine, edition_id, now=now, redispatch_after=redispatch_after),
        "awaiting_hour": _awaiting_hour(engine, edition_id, now=now),
    }


def _awaiting_hour(engine: Engine, edition_id: int, *, now: datetime) -> dict:
    """Rows waiting for the send time in their reader's zone: how many, and the next group
    to fall due (its instant and size) and the last."""
    with session_scope(engine) as session:
        n, last = session.execute(select(func.count(), func.max(D.c.due_at))
                                  .where(D.c.edition_id == edition_id, waiting(now))).one()
        nxt = session.execute(select(D.c.due_at, func.count()).where(D.c.edition_id == edition_id, waiting(now))
                              .group_by(D.c.due_at).order_by(D.c.due_at).limit(1)).first()
    return {"rows": n or 0, "next_due": _iso(nxt[0]) if nxt else None, "next_rows": nxt[1] if nxt else 0,
            "last_due": _iso(last)}


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def _failures(engine: Engine, edition_id: int) -> dict:
    final = D.c.next_attempt_at.is_(None)
    count = func.count().label("n")
    with session_scope(engine) as session:
        groups = session.execute(
            select(D.c.state, D.c.last_reply, final.label("final"), count, func.min(D.c.next_attempt_at),
                   func.max(D.c.next_attempt_at), func.max(D.c.attempts))
            .where(D.c.edition_id == edition_id, D.c.state.in_([FAILED, BOUNCED]))
            .group_by(D.c.state, D.c.last_reply, final)
            .order_by(count.desc(), D.c.state, D.c.last_reply, final).limit(REPLY_GROUPS)).all()
        total = session.scalar(select(func.count()).select_from(D).where(
            D.c.edition_id == edition_id, D.c.state.in_([FAILED, BOUNCED]))) or 0
    shown = []
    for state, reply, is_final, n, first, last, attempts in groups:
        retry = state == FAILED and not is_final
        shown.append({"state": state, "reply": reply, "count": n,
                      "final": not retry, "retry_from": _iso(first) if retry else None,
                      "retry_until": _iso(last) if retry else None, "attempts": attempts})
    return {"groups": shown, "other_rows": total - sum(g["count"] for g in shown)}


def _leases(engine: Engine, edition_id: int, *, now: datetime, timeout: timedelta) -> list[dict]:
    with session_scope(engine) as session:
        rows = session.execute(
            select(D.c.claimed_by, D.c.state, func.count(), func.max(D.c.lease_until))
            .where(D.c.edition_id == edition_id, D.c.claimed_by.is_not(None))
            .group_by(D.c.claimed_by, D.c.state)).all()
    if not rows:
        return []
    beating = alive(engine, now=now, timeout=timeout)
    workers: dict[str, dict] = {}
    for name, state, n, until in rows:
        entry = workers.setdefault(name, {
            "worker": name,
            # A name with no row in `workers` has no heartbeat to go by: not alive as far
            # as anyone can tell, and nothing recovers its rows before its leases end.
            "status": {True: "alive", False: "dead"}.get(beating.get(name), "unknown"),
            "alive": beating.get(name, False), "rows": 0, "sending": 0, "lease_until": None})
        entry["rows"] += n
        entry["sending"] += n if state == SENDING else 0
        if until is not None and (entry["lease_until"] is None or until > entry["lease_until"]):
            entry["lease_until"] = until
    out = []
    for entry in sorted(workers.values(), key=lambda e: (-e["rows"], e["worker"])):
        until = entry["lease_until"]
        entry["lease_expired"] = until is not None and until < now
        entry["lease_until"] = _iso(until)
        out.append(entry)
    return out


def _awaiting_broker(engine: Engine, edition_id: int, *, now: datetime, redispatch_after: timedelta) -> dict:
    due = or_(D.c.state == PENDING, and_(D.c.state == FAILED, D.c.next_attempt_at <= now))
    unleased = or_(D.c.lease_until.is_(None), D.c.lease_until < now)
    with session_scope(engine) as session:
        n, first, last = session.execute(
            select(func.count(), func.min(D.c.enqueued_at), func.max(D.c.enqueued_at))
            .where(D.c.edition_id == edition_id, due, unleased, D.c.enqueued_at.is_not(None))).one()
    return {"rows": n or 0,
            "enqueued_from": _iso(first), "enqueued_until": _iso(last),
            "redispatch_from": _iso(first + redispatch_after) if first else None,
            "redispatch_until": _iso(last + redispatch_after) if last else None}


def recent_editions(engine: Engine, limit: int = 20) -> list[Edition]:
    with session_scope(engine) as session:
        return list(session.scalars(select(Edition).order_by(Edition.created_at.desc(), Edition.id.desc())
                                    .limit(limit)))
