"""Deliver one batch: lease, then per row compose, claim, send, record.

Plain functions; the Celery task, `newsletter send --inline` and the tests
all call `deliver_batch`.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine

from worker.delivery import ledger
from worker.delivery.outcome import Outcome, SendResult
from worker.delivery.plan import finish_if_done, get_edition, pause_edition
from worker.delivery.ratelimit import RateLimiter
from worker.delivery.senders import Outgoing, Sender, SenderPool
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


# CPU seconds per stage in this process: render (Jinja2 + premailer, once per variant),
# personalise and mime (compose), ledger, smtp. Cheap to keep; the task logs it, the
# benchmark sums it.
STAGE_CPU: Counter[str] = Counter()

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

        from worker.delivery.variants import VariantStore

        # Editions that exist in the database share their renders; drafts (dry runs, tests sends) do not.
        store = VariantStore(engine, edition_id=edition.id, edition_key=edition.key) if edition.id > 0 else None
        renderer = VariantRenderer(settings=settings, window=window, edition_key=edition.key, load_stories=load,
                                   store=store)
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
    sender: Sender | SenderPool,
    worker: str | None = None,
    throttle: RateLimiter | None = None,
    clock: Clock = utcnow,
) -> BatchReport:
    """Deliver the due rows among `delivery_ids`. Given a SenderPool, up to
    NEWSLETTER_SMTP_CONNECTIONS lanes run at once, each with its own connections."""
    report = BatchReport()
    worker = worker or worker_name()
    edition = get_edition(engine, edition_id)
    if edition is None or edition.state != EditionState.SENDING.value:
        report.stopped = f"edition is {edition.state if edition else 'gone'}"
        return report
    batch_lease, send_lease = leases(settings)
    rows = ledger.lease_batch(engine, edition_id=edition_id, ids=delivery_ids, worker=worker, now=clock(),
                              lease=batch_lease)
    step = _Step(settings=settings, renderer=renderer_for(engine, settings, edition), sender=None,
                 secret=settings.require_secret_key(), envelope_from=settings.sender.addr_spec,
                 throttle=throttle, send_lease=send_lease, clock=clock)
    # Stop taking new rows well inside the lease: the rest are released, not cut mid-transaction.
    deadline = clock() + batch_lease * 0.8
    # With a rate limit a message may wait for its token; results are then written
    # before the wait, claims take one row at a time, and one lane is enough.
    limited = throttle is not None
    group = 1 if limited else settings.ledger_group
    pool = sender if isinstance(sender, SenderPool) else None
    chunks = deque(rows[i:i + group] for i in range(0, len(rows), group))
    lanes = 1 if (limited or pool is None) else max(1, min(settings.smtp_connections, len(chunks)))
    lock = threading.Lock()
    late: list[int] = []
    errors: list[BaseException] = []

    def check(result: SendResult) -> str | None:
        with lock:
            return _stop_reason(engine, settings, edition_id, result)

    def lane() -> None:
        # Each lane: its own SMTP connection and its own database connection, so the
        # waits (the relay's replies, the ledger's commits) of one overlap the work of others.
        lane_sender = pool.acquire() if pool is not None else sender
        lane_step = replace(step, sender=lane_sender)
        book = None
        try:
            book = ledger.BatchLedger(engine, worker=worker, max_attempts=settings.max_attempts,
                                      retry_base=settings.retry_base_seconds,
                                      pipeline=settings.ledger_pipeline and not limited)
            while not report.stopped:
                with lock:
                    chunk = chunks.popleft() if chunks else None
                if chunk is None:
                    break
                if clock() > deadline:
                    report.stopped = "batch lease running out; the rest is released"
                    break
                for _row, outcome, stop in lane_step.deliver_group(book, chunk, check):
                    with lock:
                        report.outcomes[outcome.outcome if isinstance(outcome, SendResult) else outcome] += 1
                        report.stopped = report.stopped or stop
            book.flush()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the task's thread below
            errors.append(exc)
        finally:
            if book is not None:
                try:
                    book.close()
                except Exception as exc:  # noqa: BLE001
                    errors.append(exc)
                late.extend(book.late)
            if pool is not None:
                pool.release(lane_sender)

    try:
        if lanes == 1:
            lane()
        else:
            threads = [threading.Thread(target=lane, name=f"lane-{n}") for n in range(lanes)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
    finally:
        # Every lease this batch still holds ends here: rows it did not reach, and rows whose
        # claim it lost because the edition paused (resume hands them out at once). Rows
        # recorded or lost to another worker are not this worker's any more; release skips them.
        ledger.release(engine, ids=[r.id for r in rows], worker=worker, now=clock())
    if errors:
        raise errors[0]
    for delivery_id in late:
        log.warning("delivery %s: its result arrived after the lease expired; left unknown", delivery_id)
    finish_if_done(engine, edition_id, clock())
    return report


def _stop_reason(engine: Engine, settings: Settings, edition_id: int, outcome: SendResult) -> str | None:
    """Why the batch must stop after this result (pausing the edition where it should), or None."""
    if outcome.outcome is Outcome.SENT:
        _STREAK[edition_id] = 0
    elif outcome.outcome in (Outcome.TEMPORARY, Outcome.REJECTED):
        _STREAK[edition_id] += 1
    if _STREAK[edition_id] >= settings.error_budget:
        _STREAK[edition_id] = 0
        reason = (f"paused: {settings.error_budget} failures in a row "
                  f"(NEWSLETTER_ERROR_BUDGET), last: {outcome.summary}")
        pause_edition(engine, edition_id, reason)
        return reason
    if outcome.outcome is Outcome.SENDER:
        pause_edition(engine, edition_id, f"paused: sender refused: {outcome.summary}")
        return f"sender refused: {outcome.summary}"
    if outcome.connection_failed:
        return f"connection failed: {outcome.summary}"
    return None


@dataclass
class _Step:
    """Compose, claim, send and record one row: the per-subscriber hot path."""

    settings: Settings
    renderer: VariantRenderer
    sender: Sender | None
    secret: str
    envelope_from: str
    throttle: RateLimiter | None
    send_lease: timedelta
    clock: Clock

    def prepare(self, row: ledger.Leased):
        """Compose before claiming: the claim-to-record window holds only the SMTP transaction."""
        cpu = time.thread_time
        t0 = cpu()
        variant = self.renderer.variant(row.regions)
        t1 = cpu()
        composed = problem = None
        if variant is not None:
            try:
                composed = compose(variant, Addressee(row.email, row.name, row.subscriber_id),
                                   settings=self.settings, secret=self.secret, timings=STAGE_CPU)
            except HeaderInjectionError as exc:
                problem = str(exc)
        STAGE_CPU["render"] += t1 - t0
        return variant, composed, problem

    def deliver_group(self, book: ledger.BatchLedger, rows: Sequence[ledger.Leased],
                      check: Callable[[SendResult], str | None]):
        """Yield (row, outcome, stop reason) for rows claimed together. When `check` says the
        batch must stop, rows claimed but not yet sent go back to pending."""
        cpu = time.thread_time
        prepared = [(row, *self.prepare(row)) for row in rows]
        if self.throttle is not None and prepared[0][2] is not None:
            self.throttle.acquire()
        t0 = cpu()
        claims = book.claim([row.id for row in rows], now=self.clock(), lease=self.send_lease)
        STAGE_CPU["ledger"] += cpu() - t0
        for index, (row, variant, composed, problem) in enumerate(prepared):
            claimed = claims.get(row.id, ledger.Claim("lost"))
            if claimed.state != "claimed":
                yield row, claimed.state, None  # lost to another worker, or the subscriber left: nothing sent
                continue
            if variant is None:
                book.skip(row.id, reason="no-stories", now=self.clock())
                yield row, "no-stories", None
                continue
            t1 = cpu()
            if composed is None:
                result = SendResult(Outcome.REJECTED, None, f"cannot build message: {problem}")
            else:
                result = self.sender.send(Outgoing(sender=self.envelope_from, recipient=composed.envelope_to,
                                                   data=composed.data, message_id=composed.message_id,
                                                   smtputf8=composed.smtputf8))
            if self.throttle is not None:
                self.throttle.feedback(result.code, result.reply, result.outcome is Outcome.SENT)
            t2 = cpu()
            book.record(row.id, result=result, message_id=composed.message_id if composed else None,
                        attempts=claimed.attempts, now=self.clock())
            STAGE_CPU["smtp"] += t2 - t1
            STAGE_CPU["ledger"] += cpu() - t2
            STAGE_CPU["messages"] += 1
            stop = check(result)
            if stop:
                rest = [r.id for r, *_ in prepared[index + 1:] if claims.get(r.id, ledger.Claim("")).state == "claimed"]
                book.unclaim(rest, now=self.clock())
                yield row, result, stop
                return
            yield row, result, None


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
