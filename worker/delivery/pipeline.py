"""Deliver one batch: lease, then per row compose, claim, send, record.

Plain functions; the Celery task, `newsletter send --inline` and the tests
all call `deliver_batch`.
"""

from __future__ import annotations

import logging
import os
import socket
from collections import Counter, OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine

from worker.delivery import ledger
from worker.delivery.outcome import Outcome, SendResult
from worker.delivery.plan import finish_if_done, get_edition, pause_edition
from worker.delivery.ratelimit import RateLimiter
from worker.delivery.senders import Outgoing, Sender
from worker.digest import StoryItem, Window
from worker.digest.queries import fetch_window_stories
from worker.errors import HeaderInjectionError
from worker.render.cache import VariantRenderer
from worker.render.compose import Addressee, compose
from worker.settings import Settings
from worker.store.db import session_scope
from worker.store.models import EditionState

log = logging.getLogger(__name__)
Clock = Callable[[], datetime]


def utcnow() -> datetime:
    return datetime.now(UTC)


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass
class BatchReport:
    outcomes: Counter = field(default_factory=Counter)
    stopped: str | None = None


# Failed transactions in a row, per edition, in this process (the error budget).
_STREAK: Counter[int] = Counter()

# Rendered variants per edition, per process: each region set is inlined once
# per process and edition. A few editions at most are live at once.
_RENDERERS: OrderedDict[int, VariantRenderer] = OrderedDict()
_MAX_RENDERERS = 4


def renderer_for(engine: Engine, settings: Settings, edition) -> VariantRenderer:
    renderer = _RENDERERS.get(edition.id)
    if renderer is None:
        window = Window(start=edition.window_start, end=edition.window_end, label=edition.label,
                        first_day=edition.window_start.astimezone(settings.tz).date(),
                        last_day=(edition.window_end.astimezone(settings.tz) - timedelta(seconds=1)).date())
        with session_scope(engine) as session:
            week: list[StoryItem] = fetch_window_stories(session, window)

        def load(regions: Sequence[str]) -> list[StoryItem]:
            wanted = set(regions)
            return [s for s in week if wanted.intersection(s.regions)]

        renderer = VariantRenderer(settings=settings, window=window, edition_key=edition.key, load_stories=load)
        _RENDERERS[edition.id] = renderer
        while len(_RENDERERS) > _MAX_RENDERERS:
            _RENDERERS.popitem(last=False)
    return renderer


def leases(settings: Settings) -> tuple[timedelta, timedelta]:
    """(batch lease, send lease). The send lease covers one SMTP transaction at its
    slowest: connect, greeting, EHLO, STARTTLS, AUTH, MAIL, RCPT, DATA, content, reply,
    each allowed NEWSLETTER_SMTP_TIMEOUT."""
    send = timedelta(seconds=settings.send_lease_seconds or settings.smtp_timeout * 10 + 30)
    batch = timedelta(seconds=settings.batch_lease_seconds)
    return batch, send


def deliver_batch(
    engine: Engine,
    settings: Settings,
    *,
    edition_id: int,
    delivery_ids: Sequence[int],
    sender: Sender,
    worker: str | None = None,
    throttle: RateLimiter | None = None,
    clock: Clock = utcnow,
) -> BatchReport:
    report = BatchReport()
    worker = worker or worker_name()
    edition = get_edition(engine, edition_id)
    if edition is None or edition.state != EditionState.SENDING.value:
        report.stopped = f"edition is {edition.state if edition else 'gone'}"
        return report
    batch_lease, send_lease = leases(settings)
    rows = ledger.lease_batch(engine, edition_id=edition_id, ids=delivery_ids, worker=worker, now=clock(),
                              lease=batch_lease)
    renderer = renderer_for(engine, settings, edition)
    secret = settings.require_secret_key()
    sender_address = settings.sender.addr_spec
    done: list[int] = []
    # Stop taking new rows well inside the lease: the rest are released, not cut mid-transaction.
    deadline = clock() + batch_lease * 0.8
    try:
        for row in rows:
            if clock() > deadline:
                report.stopped = "batch lease running out; the rest is released"
                break
            outcome = _deliver_row(engine, settings, row, renderer=renderer, sender=sender, worker=worker,
                                   secret=secret, envelope_from=sender_address, throttle=throttle,
                                   send_lease=send_lease, clock=clock)
            done.append(row.id)
            report.outcomes[outcome.outcome if isinstance(outcome, SendResult) else outcome] += 1
            if isinstance(outcome, SendResult):
                if outcome.outcome is Outcome.SENT:
                    _STREAK[edition_id] = 0
                elif outcome.outcome in (Outcome.TEMPORARY, Outcome.REJECTED):
                    _STREAK[edition_id] += 1
                if _STREAK[edition_id] >= settings.error_budget:
                    _STREAK[edition_id] = 0
                    reason = (f"paused: {settings.error_budget} failures in a row "
                              f"(NEWSLETTER_ERROR_BUDGET), last: {outcome.summary}")
                    pause_edition(engine, edition_id, reason)
                    report.stopped = reason
                    break
                if outcome.outcome is Outcome.SENDER:
                    pause_edition(engine, edition_id, f"paused: sender refused: {outcome.summary}")
                    report.stopped = f"sender refused: {outcome.summary}"
                    break
                if outcome.connection_failed:
                    report.stopped = f"connection failed: {outcome.summary}"
                    break
    finally:
        ledger.release(engine, ids=[r.id for r in rows if r.id not in set(done)], worker=worker, now=clock())
    finish_if_done(engine, edition_id, clock())
    return report


def _deliver_row(engine, settings, row, *, renderer, sender, worker, secret, envelope_from, throttle,
                 send_lease, clock) -> SendResult | str:
    variant = renderer.variant(row.regions)
    composed = None
    problem = None
    if variant is not None:
        try:
            composed = compose(variant, Addressee(row.email, row.name, row.subscriber_id),
                               settings=settings, secret=secret)
        except HeaderInjectionError as exc:
            problem = str(exc)
    if throttle is not None and composed is not None:
        throttle.acquire()
    state = ledger.claim(engine, delivery_id=row.id, worker=worker, now=clock(), lease=send_lease)
    if state != "claimed":
        return state  # lost to another worker, or the subscriber left: nothing sent
    if variant is None:
        ledger.skip(engine, delivery_id=row.id, worker=worker, reason="no-stories", now=clock())
        return "no-stories"
    if composed is None:
        result = SendResult(Outcome.REJECTED, None, f"cannot build message: {problem}")
    else:
        result = sender.send(Outgoing(sender=envelope_from, recipient=composed.message["To"].addresses[0].addr_spec,
                                      data=composed.data, message_id=composed.message_id,
                                      smtputf8=composed.smtputf8))
    if throttle is not None:
        throttle.feedback(result.code, result.reply, result.outcome is Outcome.SENT)
    recorded = ledger.record(engine, delivery_id=row.id, worker=worker, result=result,
                             message_id=composed.message_id if composed else None,
                             max_attempts=settings.max_attempts, retry_base=settings.retry_base_seconds,
                             now=clock())
    if not recorded:
        log.warning("delivery %s: result %s arrived after its lease expired; left unknown",
                    row.id, result.outcome)
    return result


def run_inline(engine: Engine, settings: Settings, edition_id: int, sender: Sender,
               clock: Clock = utcnow) -> list[BatchReport]:
    """Everything due in an edition, batch by batch, in this process (no broker).

    Rows whose retry lies in the future are left to the reconciler."""
    from worker.delivery.schedule import dispatch

    worker = f"inline:{worker_name()}"
    reports: list[BatchReport] = []
    while True:
        batches: list[list[int]] = []
        dispatch(engine, settings, edition_id, lambda _edition, ids, out=batches: out.append(ids), clock())
        if not batches:
            return reports
        for ids in batches:
            report = deliver_batch(engine, settings, edition_id=edition_id, delivery_ids=ids, sender=sender,
                                   worker=worker, clock=clock)
            reports.append(report)
            if report.stopped:
                return reports
