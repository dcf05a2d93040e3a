"""Deliver one batch: lease, then per row compose, claim, send, record.

Plain functions; the Celery task, `newsletter send --inline` and the tests
all call `deliver_batch`.
"""

from __future__ import annotations

import functools
import logging
import os
import socket
import threading
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TypeVar

from sqlalchemy import Engine
from sqlalchemy.exc import InterfaceError, OperationalError

from worker import metrics
from worker.bounces.verp import ReturnPath
from worker.clicks import opens_of
from worker.clock import utcnow
from worker.delivery import ledger
from worker.delivery.lanes import gauge_for
from worker.delivery.ledger import ClaimState
from worker.delivery.outcome import Outcome, SendResult
from worker.delivery.plan import finish_if_done, get_edition, pause_edition
from worker.delivery.ratelimit import RateLimiter, is_throttle
from worker.delivery.relay import pause_for_relay
from worker.delivery.schedule import dispatch
from worker.delivery.senders import Outgoing, Sender, SenderPool
from worker.delivery.variants import VariantStore
from worker.digest import Selection, StoryItem, Window, select_wider
from worker.digest.queries import fetch_window_stories
from worker.errors import HeaderInjectionError
from worker.render.cache import VariantRenderer
from worker.render.compose import Addressee, Composed, compose
from worker.render.digest import RenderedVariant, TooLargeToSend
from worker.render.links import ClickLinks
from worker.settings import Settings
from worker.store.db import session_scope
from worker.store.models import EditionState

log = logging.getLogger(__name__)
Clock = Callable[[], datetime]
T = TypeVar("T")
# While the database is away a lane asks again after 0.25 s, then twice as long each time up to this.
_OUTAGE_STEP_MAX = 5.0


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _database_away(engine: Engine, exc: BaseException) -> bool:
    """A database error a wait may cure (connection refused or dropped, server restarting),
    as SQLAlchemy raises it or, from the raw connection, as the driver does."""
    if isinstance(exc, OperationalError | InterfaceError):
        return True
    dbapi = engine.dialect.loaded_dbapi
    return isinstance(exc, dbapi.OperationalError | dbapi.InterfaceError)


def outlast(engine: Engine, step: Callable[[], T], *, until: datetime, clock: Clock,
            reconnect: Callable[[], None] | None = None, what: str = "the ledger") -> T:
    """Run `step`; while the database is away, wait and run it again (after `reconnect`),
    until `until`, then raise the last error. A database restart is a pause of the
    lanes, not a failed batch: they go on where they were, with every result they hold."""
    delay, away_since = 0.25, None
    while True:
        try:
            result = step()
        except Exception as exc:
            if not _database_away(engine, exc) or clock() >= until:
                raise
            if away_since is None:
                away_since = time.monotonic()
                log.warning("database unreachable (%s); %s waits and tries again until %s",
                            str(exc).splitlines()[0][:200], what, until.isoformat(timespec="seconds"))
            time.sleep(delay)
            delay = min(delay * 2, _OUTAGE_STEP_MAX)
            if reconnect is not None:
                try:
                    reconnect()
                except Exception as again:  # noqa: BLE001 - still away: the next round waits longer
                    if not _database_away(engine, again):
                        raise
            continue
        if away_since is not None:
            log.info("database back: %s went on after %.1f s", what, time.monotonic() - away_since)
        return result


@dataclass(frozen=True)
class NotSent:
    """A row that ended without an SMTP transaction: lost (to another worker, or to a
    pause), or skipped (the subscriber left, no stories), with that reason."""

    reason: str


Delivered = SendResult | NotSent


@dataclass
class BatchReport:
    outcomes: Counter = field(default_factory=Counter)  # by Outcome, or by a NotSent reason
    stopped: str | None = None


# Failed transactions in a row, per edition of a database, in this process (the error
# budget). Keyed by the database too: edition ids are only unique within one.
_STREAK: Counter[tuple[str, int]] = Counter()

# Rendered variants per edition, per process: each region set is inlined once
# per process and edition. A few editions at most are live at once. Keyed by the
# database and the edition's creation too: ids restart in another database (or a
# restored one), and a render must never cross into another edition.
_RENDERERS: OrderedDict[tuple, VariantRenderer] = OrderedDict()
_MAX_RENDERERS = 4


def renderer_for(engine: Engine, settings: Settings, edition) -> VariantRenderer:
    """The edition's renderer in this process; its variants are shared with every other
    process through the database (VariantStore)."""
    key = (engine.url.render_as_string(hide_password=True), edition.id, edition.key, edition.created_at)
    renderer = _RENDERERS.get(key)
    if renderer is None:
        window = Window.of_edition(edition, settings.tz)
        renderer = _renderer(engine, settings, window=window, edition_key=edition.key,
                             store=VariantStore(engine, edition_id=edition.id, edition_key=edition.key),
                             clicks=ClickLinks.of_edition(settings, edition.id))
        _RENDERERS[key] = renderer
        while len(_RENDERERS) > _MAX_RENDERERS:
            _RENDERERS.popitem(last=False)
    return renderer


def draft_renderer(engine: Engine, settings: Settings, *, window: Window, edition_key: str) -> VariantRenderer:
    """A renderer for what is not an edition in the ledger (a test send, a dry run): the same
    rendering, nothing stored or kept."""
    return _renderer(engine, settings, window=window, edition_key=edition_key, store=None)


def _renderer(engine: Engine, settings: Settings, *, window: Window, edition_key: str,
              store: VariantStore | None, clicks: ClickLinks | None = None) -> VariantRenderer:
    with session_scope(engine) as session:
        week: list[StoryItem] = fetch_window_stories(session, window)

    def load(regions: Sequence[str]) -> list[StoryItem]:
        wanted = set(regions)
        return [s for s in week if wanted.intersection(s.regions)]

    @functools.cache
    def opens() -> dict[int, int]:
        return opens_of(engine, [story.id for story in week])

    def wider(regions: tuple[str, ...]) -> Selection:
        return select_wider(week, opens(), regions, limit=settings.stories_per_region)

    return VariantRenderer(settings=settings, window=window, edition_key=edition_key, load_stories=load, store=store,
                           clicks=clicks, wider=wider if settings.wider else None)


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
    token: str | None = None,
) -> BatchReport:
    """Deliver the due rows among `delivery_ids`: lease them, then claim, send and record
    each. Given a SenderPool, up to NEWSLETTER_SMTP_CONNECTIONS lanes run at once.
    `token` (the task's id) lets a retry or redelivery of the same task take its rows back
    from another process (see ledger.lease_batch)."""
    worker = worker or worker_name()
    # Waits for the database end where the batch would stop taking rows anyway.
    until = clock() + settings.batch_lease * 0.8
    edition = outlast(engine, lambda: get_edition(engine, edition_id), until=until, clock=clock, what="a batch")
    if edition is None or edition.state != EditionState.SENDING.value:
        return BatchReport(stopped=f"edition is {edition.state if edition else 'gone'}")
    rows = outlast(engine, lambda: ledger.lease_batch(engine, edition_id=edition_id, ids=delivery_ids, worker=worker,
                                                      now=clock(), lease=settings.batch_lease, token=token),
                   until=until, clock=clock, what="a batch")
    batch = _Batch(engine, settings, edition, rows, worker=worker, throttle=throttle, clock=clock)
    try:
        batch.run(sender)
    finally:
        # Every lease this batch still holds ends here: rows it did not reach, and rows whose
        # claim it lost because the edition paused (resume hands them out at once). Rows
        # recorded or lost to another worker are not this worker's any more; release skips them.
        outlast(engine, lambda: ledger.release(engine, ids=[r.id for r in rows], worker=worker, now=clock()),
                until=batch.deadline, clock=clock, what="a batch")
    for delivery_id in batch.late:
        log.warning("delivery %s: its result arrived after the lease expired; left unknown", delivery_id)
    outlast(engine, lambda: finish_if_done(engine, edition_id, clock()), until=batch.deadline, clock=clock,
            what="a batch")
    return batch.report


def _stop_reason(engine: Engine, settings: Settings, edition_id: int, outcome: SendResult, *, lanes: int = 1,
                 now: datetime | None = None) -> str | None:
    """Why the batch must stop after this result (pausing the edition where it should), or None.

    The error budget is per lane: a batch's lanes fail together when the relay does, and
    sixteen of them must not use it up sixteen times sooner than one. A run of temporary
    failures pauses the edition until the relay answers a probe (worker/delivery/relay.py);
    anything else, until a person resumes it."""
    key = (str(engine.url), edition_id)
    if outcome.outcome is Outcome.SENT:
        _STREAK[key] = 0
    elif outcome.outcome in (Outcome.TEMPORARY, Outcome.REJECTED):
        _STREAK[key] += 1
    if _STREAK[key] >= settings.error_budget * lanes:
        failures, _STREAK[key] = _STREAK[key], 0
        per_lane = f"; {settings.error_budget} per lane" if lanes > 1 else ""
        reason = f"paused: {failures} failures in a row (NEWSLETTER_ERROR_BUDGET{per_lane}), last: {outcome.summary}"
        if outcome.outcome is Outcome.TEMPORARY:
            pause_for_relay(engine, edition_id, reason, now=now or utcnow(), settings=settings)
        else:
            pause_edition(engine, edition_id, reason)
        return reason
    if outcome.outcome is Outcome.SENDER:
        pause_edition(engine, edition_id, f"paused: sender refused: {outcome.summary}")
        return f"sender refused: {outcome.summary}"
    if outcome.connection_failed:
        return f"connection failed: {outcome.summary}"
    return None


class _Batch:
    """One batch's state shared by its lanes: the rows still to take, the report, the first
    reason to stop, and what every lane needs to deliver a row."""

    def __init__(self, engine: Engine, settings: Settings, edition, rows: list[ledger.Leased], *, worker: str,
                 throttle: RateLimiter | None, clock: Clock) -> None:
        self.engine, self.settings, self.edition_id = engine, settings, edition.id
        self.worker, self.throttle, self.clock = worker, throttle, clock
        self.renderer = renderer_for(engine, settings, edition)
        self.secret = settings.require_secret_key()
        self.envelope_from = settings.sender.addr_spec
        # VERP: each message's envelope sender names its delivery (worker/bounces/verp.py).
        self.return_path = ReturnPath.parse(settings.bounce_address, self.secret) if settings.bounce_address else None
        self.send_lease = settings.send_lease
        # Stop taking new rows well inside the lease: the rest are released, not cut mid-transaction.
        self.deadline = clock() + settings.batch_lease * 0.8
        self._rows = deque(rows)
        self.group: ledger.StatementGroup | None = None
        self._lock = threading.Lock()
        self.report = BatchReport()
        self.late: list[int] = []
        self.gauge = gauge_for((engine.url.render_as_string(hide_password=True), edition.id, edition.key,
                                edition.created_at, settings.smtp_connections), settings)
        self.pool: SenderPool | None = None
        self._threads: list[threading.Thread] = []
        self._running = 0
        self._open: set[int] = set()   # lanes (thread ids) holding an open conversation
        self._connecting: set[int] = set()
        self._errors: list[BaseException] = []

    def run(self, sender: Sender | SenderPool) -> None:
        """Lanes, each with its own SMTP conversation, so that the waits of one (the relay's
        replies, the ledger's commits) overlap the work of the others. How many is the
        edition's gauge's to say (worker/delivery/lanes.py), batch after batch."""
        if not isinstance(sender, SenderPool):
            _run_lane(self, sender)
            return
        self.pool = sender
        # With a rate limit a message may wait for its token: one lane is enough.
        lanes = 1 if self.throttle is not None else max(1, min(self.gauge.lanes, len(self._rows)))
        # Lanes that claim at the same moment share one statement (group commit).
        if self.throttle is None and (self.gauge.auto or lanes > 1):
            self.group = self.outlast(self._open_group)
        self.gauge.start()
        try:
            with self._lock:
                self._spawn(lanes)
            while True:  # lanes may start more lanes
                with self._lock:
                    threads = list(self._threads)
                for thread in threads:
                    thread.join()
                with self._lock:
                    if len(self._threads) > len(threads):
                        continue
                    # A row a refused lane gave back after the others had run out of rows.
                    if not self._rows or self.report.stopped or self._errors:
                        break
                    self._spawn(1)
        finally:
            if self.group is not None:
                self.group.close()
        if self._errors:
            raise self._errors[0]  # the first lane's error, raised once every lane has stopped

    def _spawn(self, count: int) -> None:
        for _ in range(count):
            thread = threading.Thread(target=self._pooled_lane, name=f"lane-{len(self._threads) + 1}", daemon=True)
            self._threads.append(thread)
            self._lanes(+1)
            thread.start()

    def _pooled_lane(self) -> None:
        pool, retired = self.pool, False
        try:
            sender = pool.acquire()
            try:
                retired = _run_lane(self, sender)
            finally:
                if retired:
                    sender.close()  # the relay's connection back to it
                pool.release(sender)
        except BaseException as exc:  # noqa: BLE001 - raised by run() once every lane has stopped
            with self._lock:
                self._errors.append(exc)
        finally:
            with self._lock:
                self._open.discard(threading.get_ident())
                self._connecting.discard(threading.get_ident())
                if not retired:
                    self._lanes(-1)

    def _lanes(self, change: int) -> None:
        self._running += change
        metrics.count_lanes(change)

    @property
    def lanes(self) -> int:
        """Lanes running now: the error budget is per lane."""
        return max(1, self._running)

    def opened(self, sender: Sender, row: ledger.Leased) -> SendResult | None | bool:
        """Open the lane's conversation for `row`: None when it is open. False: the relay
        refused one more while others of this batch hold theirs; the row goes back unclaimed
        and the lane ends. A refusal with no other conversation open (the relay is down, or
        refuses us) is returned, to be the row's result as a failed send's would be."""
        if self.pool is None or not hasattr(sender, "open"):
            return None
        me = threading.get_ident()
        with self._lock:
            self._connecting.add(me)
        failure = sender.open()
        with self._lock:
            self._connecting.discard(me)
            if failure is None:
                self._open.add(me)
                return None
            self._open.discard(me)
            others = len(self._open) + len(self._connecting)
            if failure.outcome is not Outcome.TEMPORARY or others == 0:
                return failure
            self._rows.appendleft(row)
            self._lanes(-1)
            # Only a refusal beside an open conversation says the relay is full; beside
            # lanes still connecting it may as well be down: this lane just ends, and if
            # the relay refuses them all, the last one reports the failure.
            crowded = bool(self._open)
        if crowded:
            lanes = self.gauge.crowded(others, failure.summary)
            log.warning("edition %s: %s; %d lanes from now on", self.edition_id, self.gauge.reason, lanes)
        return False

    def after(self, result: Delivered) -> bool:
        """A lane finished a row: does it go on? Starts lanes the gauge now wants; ends this
        one if there are more than it wants."""
        if self.pool is None or self.throttle is not None:
            return True
        if isinstance(result, SendResult) and not result.connection_failed and is_throttle(result.code, result.reply):
            self.gauge.slow_down(result.summary)
            log.warning("edition %s: %s; %d lanes from now on", self.edition_id, self.gauge.reason, self.gauge.lanes)
        want = self.gauge.observe(result.seconds if isinstance(result, SendResult) else None)
        with self._lock:
            if self._running > want:
                self._lanes(-1)
                return False
            if self._running < want and len(self._rows) > self._running and not self.report.stopped:
                self._spawn(min(want - self._running, len(self._rows) - self._running))
        return True

    def open_ledger(self) -> ledger.Ledger:
        # Under a rate limit a result is written before the wait for the next token, not with
        # the next claim: the row would otherwise stay `sending` for the whole wait.
        return ledger.open_ledger(self.engine, worker=self.worker, max_attempts=self.settings.max_attempts,
                                  retry_base=self.settings.retry_base_seconds, pipeline=self.throttle is None,
                                  group=self.group)

    def _open_group(self) -> ledger.StatementGroup | None:
        return ledger.open_group(self.engine, worker=self.worker, max_attempts=self.settings.max_attempts,
                                 retry_base=self.settings.retry_base_seconds)

    def take(self) -> ledger.Leased | None:
        """The next row, or None when the batch is done or must stop."""
        with self._lock:
            if self.report.stopped or not self._rows:
                return None
            if self.clock() > self.deadline:
                self.report.stopped = "batch lease running out; the rest is released"
                return None
            return self._rows.popleft()

    def count(self, outcome: Delivered, stop: str | None) -> None:
        with self._lock:
            self.report.outcomes[outcome.reason if isinstance(outcome, NotSent) else outcome.outcome] += 1
            self.report.stopped = self.report.stopped or stop

    def stop_reason(self, result: SendResult) -> str | None:
        with self._lock:
            return self.outlast(lambda: _stop_reason(self.engine, self.settings, self.edition_id, result,
                                                     lanes=self.lanes, now=self.clock()))

    def outlast(self, step: Callable[[], T], reconnect: Callable[[], None] | None = None) -> T:
        """`step`, waiting out a database outage until the batch would stop anyway."""
        return outlast(self.engine, step, until=self.deadline, clock=self.clock, reconnect=reconnect,
                       what=f"a lane of edition {self.edition_id}")

    def add_late(self, ids: list[int]) -> None:
        with self._lock:
            self.late.extend(ids)


@dataclass(frozen=True)
class _Prepared:
    row: ledger.Leased
    variant: RenderedVariant | None  # None: no stories for the row's regions
    composed: Composed | None
    problem: str | None = None       # why the message could not be built
    # Why nothing of this edition can be sent until an operator acts (the edition pauses).
    blocked: str | None = None


def _run_lane(batch: _Batch, sender: Sender) -> bool:
    """Deliver rows until the batch is done or must stop: True if the lane ended early
    (fewer lanes wanted, or the relay refused its conversation)."""
    book = batch.outlast(batch.open_ledger)
    retired = False
    try:
        while (row := batch.take()) is not None:
            refused = batch.opened(sender, row)
            if refused is False:
                retired = True
                break
            outcome, stop = _deliver(batch, book, sender, row, refused)
            batch.count(outcome, stop)
            if not batch.after(outcome):
                retired = True
                break
        # The last results, before the connection goes back (and across an outage).
        batch.outlast(book.flush, book.reconnect)
    finally:
        try:
            book.close()
        finally:
            batch.add_late(book.late)
    return retired


def _deliver(batch: _Batch, book: ledger.Ledger, sender: Sender, row: ledger.Leased,
             refused: SendResult | None = None) -> tuple[Delivered, str | None]:
    """Claim the row, send it, record the result: (outcome, reason for the batch to stop).
    The message is composed before the claim, so the claim-to-record window holds only
    the SMTP transaction."""
    item = _prepare(batch, row)
    if item.blocked is not None:
        # Before any claim: the row stays pending, and resume renders the variant again.
        reason = f"paused: {item.blocked}"
        batch.outlast(lambda: pause_edition(batch.engine, batch.edition_id, reason))
        return NotSent("not-sendable"), reason
    if batch.throttle is not None and item.composed is not None:
        batch.throttle.acquire()
    # Thread CPU by stage (newsletter_stage_cpu_seconds_total).
    cpu = metrics.stage_clock()
    now = batch.clock()
    claim = _claim(batch, book, row.id, now)
    cpu.lap("ledger")
    if claim.state is not ClaimState.CLAIMED:
        # Lost to another worker or to a pause, or the subscriber left: nothing sent.
        return NotSent(claim.reason or claim.state.value), None
    if item.variant is None:
        batch.outlast(lambda: book.skip(row.id, reason="no-stories", now=now), book.reconnect)
        return NotSent("no-stories"), None
    result = refused or _send(batch, sender, item)
    cpu.lap("smtp")
    try:
        book.record(row.id, result=result, message_id=item.composed.message_id if item.composed else None,
                    attempts=claim.attempts, now=batch.clock())
    except Exception as exc:
        if not _database_away(batch.engine, exc):
            raise
        # The result is held by the ledger until a statement writes it: wait for the database.
        batch.outlast(book.flush, book.reconnect)
    cpu.lap("ledger")
    metrics.count_message(result.outcome, result.code)
    return result, batch.stop_reason(result)


def _claim(batch: _Batch, book: ledger.Ledger, delivery_id: int, now: datetime) -> ledger.Claim:
    """The row's claim, waiting out a database outage. A claim repeated after a failed
    statement may find the row already `sending` under this very lease: the first one
    committed before the database went away (its reply was lost), so the row is ours."""
    failed = []

    def attempt() -> ledger.Claim:
        try:
            claim = book.claim([delivery_id], now=now, lease=batch.send_lease).get(delivery_id, ledger.LOST)
        except Exception:
            failed.append(True)
            raise
        if failed and claim.state is ClaimState.LOST:
            attempts = ledger.claimed_before(batch.engine, ids=[delivery_id], worker=batch.worker,
                                             lease_until=now + batch.send_lease).get(delivery_id)
            if attempts is not None:
                return ledger.Claim(ClaimState.CLAIMED, attempts)
        return claim

    return batch.outlast(attempt, book.reconnect)


def _prepare(batch: _Batch, row: ledger.Leased) -> _Prepared:
    """Compose before claiming: the claim-to-record window holds only the SMTP transaction."""
    try:
        with metrics.stage_cpu("render"):
            variant = batch.outlast(lambda: batch.renderer.variant(row.regions, row.language))
    except TooLargeToSend as exc:
        return _Prepared(row, None, None, blocked=f"{exc}; shorten NEWSLETTER_POSTAL_ADDRESS or the "
                                                   "templates, then `newsletter resume`")
    if variant is None:
        return _Prepared(row, None, None)
    try:
        composed = compose(variant, Addressee(row.email, row.name, row.subscriber_id, row.link_key),
                           settings=batch.settings, secret=batch.secret)
    except HeaderInjectionError as exc:
        return _Prepared(row, variant, None, str(exc))
    return _Prepared(row, variant, composed)


def _send(batch: _Batch, sender: Sender, item: _Prepared) -> SendResult:
    if item.composed is None:
        result = SendResult(Outcome.REJECTED, None, f"cannot build message: {item.problem}")
    else:
        c = item.composed
        envelope_from = batch.return_path.for_delivery(item.row.id) if batch.return_path else batch.envelope_from
        result = sender.send(Outgoing(sender=envelope_from, recipient=c.envelope_to, data=c.data,
                                      message_id=c.message_id, smtputf8=c.smtputf8))
    if batch.throttle is not None:
        batch.throttle.feedback(result.code, result.reply, result.outcome is Outcome.SENT)
    return result


def run_inline(engine: Engine, settings: Settings, edition_id: int, sender: Sender,
               clock: Clock = utcnow) -> list[BatchReport]:
    """Everything due in an edition, batch by batch, in this process (no broker).

    Rows whose retry lies in the future are left to the reconciler."""
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
