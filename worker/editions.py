"""The operator's actions on an edition, behind one door: find the window, plan the edition
or reuse the one that exists, approve or discard a held one, hand it to the broker or run
it in this process, follow it, dry-run it, send test copies, retry its failures, pause
and resume it, and say where it stands.

The command line (worker/cli/sending.py, send.py), the operator page (worker/web/operator.py)
and the task shells (worker/tasks.py) call these and print or render what comes back:
nothing here prints, and every result is a small frozen dataclass. A refusal each caller
words for its own reader (not held, released by someone else a moment ago) is a value;
misuse (no such edition to retry, an address that is not one) raises UsageError, as the
delivery modules do.

The broker is reached only from here (`hand_out`): the Celery app is built on first use
and kept, one per broker URL, and Celery is imported then, not before, so the web app,
which calls this module, loads no Celery module until an operator approves an edition.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from enum import StrEnum
from typing import Any, NamedTuple

from sqlalchemy import Engine, func, select

# deliver_batch, one batch of an edition claimed row by row, is a send task's whole work:
# re-exported as it is.
from worker.clock import utcnow
from worker.delivery.guard import Overlap, WeekCheck, check_week, overlapping_editions
from worker.delivery.outcome import Outcome
from worker.delivery.pipeline import BatchReport, deliver_batch, draft_renderer
from worker.delivery.pipeline import run_inline as _run_inline
from worker.delivery.plan import (
    approve_edition,
    discard_edition,
    find_edition,
    get_edition,
    next_force_key,
    pause_edition,
    plan_edition,
    recipients_now,
    region_sets_with_stories,
    require_edition,
    resume_edition,
)
from worker.delivery.plan import retry_failed as _requeue_failed
from worker.delivery.schedule import Publish, Reconciled, dispatch, dispatch_recovered, release_local_send
from worker.delivery.schedule import reconcile as _reconcile
from worker.delivery.senders import Outgoing, make_sender, make_sender_pool
from worker.delivery.status import (
    EditionStatus,
    Progress,
    count_in_state,
    edition_progress,
    edition_status,
    edition_whereabouts,
    recent_editions,
)
from worker.digest import Window, custom_window
from worker.digest.queries import fetch_window_stories
from worker.errors import UsageError
from worker.ingest.subscribers import InvalidSubscriber, check_address
from worker.preview import resolve_week, weekly_edition_key
from worker.render.compose import Addressee, compose
from worker.render.digest import RenderedVariant
from worker.settings import Settings
from worker.store.db import session_scope
from worker.store.models import DeliveryState, Edition, EditionState, Subscriber, SubscriberStatus

__all__ = [
    "EditionStatus", "Progress", "Target", "Plan", "Decision", "Release", "Released", "DryRun", "DrySet",
    "TestCopy", "Resume", "Resumed", "FullStatus", "BrokerUnreachable",
    "resolve_window", "resolve_edition", "original_key", "plan_or_reuse", "release", "hand_out", "run_inline",
    "follow", "dry_run", "send_test_copies", "count_failed", "pause", "resume", "status", "full_status",
    "recent", "overview", "find", "require", "approval_sends", "guard_view", "recipients", "window_story_count",
    "deliver_batch", "reconcile", "recover",
]

_FORCED = re.compile(r"(-force-\d+)+$")


class Target(NamedTuple):
    """The edition a command means: its window, key and kind (`weekly` or `manual`)."""

    window: Window
    key: str
    kind: str


def resolve_window(settings: Settings, week: str | None, since: date | None, until: date | None) -> Target:
    """`--week` (default: the week that ended last) or `--since/--until` (a manual edition)."""
    if since and until:
        try:
            window = custom_window(since, until, settings.tz)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        return Target(window, f"manual-{window.label}", "manual")
    window = resolve_week(week, settings)
    return Target(window, weekly_edition_key(window.label), "weekly")


def resolve_edition(engine: Engine, settings: Settings, key: str) -> Target:
    """An edition that exists, by key, whatever its key (a forced `weekly-2025-W05-force-3`
    cannot be named by a week)."""
    edition = require_edition(engine, key)
    return Target(Window.of_edition(edition, settings.tz), edition.key, edition.kind)


def original_key(key: str) -> str:
    """`weekly-2025-W05-force-3` -> `weekly-2025-W05` (next_force_key's suffix taken off)."""
    return _FORCED.sub("", key)


# -- planning --------------------------------------------------------------------------


class Decision(StrEnum):
    PLANNED = "planned"        # a new edition
    FORCED = "forced"          # a new edition under the next -force-N key, audited
    REQUEUED = "requeued"      # its failed rows went back to pending
    HELD = "held"              # it waits for --approve or --discard: nothing done
    CONTINUED = "continued"    # still sending: its due rows go out now
    EXISTS = "exists"          # nothing done


@dataclass(frozen=True)
class Plan:
    decision: Decision
    key: str                          # the edition's key; for FORCED the new one
    edition_id: int | None            # the edition to deliver now; None: nothing to deliver
    state: EditionState               # the edition's state after the decision
    reason: str | None = None         # why it is held or paused
    # The planned edition's (PLANNED, FORCED) or the one that exists (CONTINUED, EXISTS).
    status: EditionStatus | None = None
    note: str | None = None           # FORCED: the audit note kept on the edition
    requeued: int = 0                 # REQUEUED: failed rows put back


def plan_or_reuse(engine: Engine, target: Target, *, force: bool, retry: bool, who: str,
                  continue_open: bool = False, now: datetime | None = None) -> Plan:
    """The edition to deliver, planned now, or what happened to the one that exists.

    An edition that exists is only reported, unless `retry` (its failed rows go back to
    pending), `force` (a new key) or `continue_open` (it is still sending: deliver its due
    rows now, which --inline and --wait ask for)."""
    key, now = target.key, now or utcnow()
    existing = find_edition(engine, key)
    if existing is not None and force:
        new_key = next_force_key(engine, key)
        note = f"forced re-send of {key} by {who} at {now.isoformat()}"
        planned = plan_edition(engine, key=new_key, kind=target.kind, window=target.window, now=now, note=note)
        return _planned(engine, Decision.FORCED, planned.edition_id, note=note)
    if existing is not None and retry:
        count = _requeue_failed(engine, existing.id, now)
        state = EditionState(existing.state)
        go = count and state is not EditionState.PAUSED  # a paused one's rows go after `resume`
        return Plan(Decision.REQUEUED, key, existing.id if go else None, state, existing.reason, requeued=count)
    if existing is not None and existing.state == EditionState.HELD.value:
        return Plan(Decision.HELD, key, None, EditionState.HELD, existing.reason)
    if existing is not None:
        data = edition_status(engine, existing, list_unknown=0)
        if continue_open and data.state is EditionState.SENDING:
            return Plan(Decision.CONTINUED, key, existing.id, data.state, existing.reason, data)
        return Plan(Decision.EXISTS, key, None, data.state, existing.reason, data)
    if retry:
        raise UsageError(f"no edition {key!r} to retry")
    planned = plan_edition(engine, key=key, kind=target.kind, window=target.window, now=now)
    return _planned(engine, Decision.PLANNED, planned.edition_id)


def _planned(engine: Engine, decision: Decision, edition_id: int, *, note: str | None = None) -> Plan:
    data = status(engine, edition_id)
    return Plan(decision, data.key, edition_id, data.state, data.reason, data, note=note)


class Released(StrEnum):
    APPROVED = "approved"
    DISCARDED = "discarded"
    MISSING = "missing"     # no edition by that key
    NOT_HELD = "not-held"   # it is in another state: nothing to release
    RACED = "raced"         # someone else released it between our read and our write


@dataclass(frozen=True)
class Release:
    outcome: Released
    key: str
    edition_id: int | None = None
    state: EditionState | None = None   # NOT_HELD: the state it is in
    held_reason: str | None = None      # APPROVED, DISCARDED: why it had been held

    @property
    def done(self) -> bool:
        return self.outcome in (Released.APPROVED, Released.DISCARDED)


def release(engine: Engine, settings: Settings, key: str, *, approve: bool, who: str,
            now: datetime | None = None) -> Release:
    """Approve a held edition (its rows planned again from what is stored now, due at
    each reader's hour when the schedule is local) or discard it (never sent). Approving
    does not hand it out: `hand_out` or `run_inline` next."""
    edition = find_edition(engine, key)
    if edition is None:
        return Release(Released.MISSING, key)
    if edition.state != EditionState.HELD.value:
        return Release(Released.NOT_HELD, edition.key, edition.id, EditionState(edition.state))
    now = now or utcnow()
    if approve:
        moved = approve_edition(engine, edition.id, now=now, who=who, local=release_local_send(edition, settings))
    else:
        moved = discard_edition(engine, edition.id, now=now, who=who)
    if not moved:
        return Release(Released.RACED, edition.key, edition.id)
    return Release(Released.APPROVED if approve else Released.DISCARDED, edition.key, edition.id,
                   held_reason=edition.reason)


# -- delivering ------------------------------------------------------------------------


class BrokerUnreachable(Exception):
    """The broker refused or never answered a hand-out. The rows not handed out stay
    pending: a running worker's reconciler hands them out once the broker is back."""

    def __init__(self, broker_url: str, cause: BaseException) -> None:
        super().__init__(f"cannot reach the broker at {broker_url}: {cause}")
        self.broker_url, self.cause = broker_url, cause


# Celery apps by broker URL, built on first hand-out and kept: an app holds its broker
# connection pool, and a new one per approval would open (and leak) a pool each time.
_APPS: dict[str, Any] = {}
_APPS_LOCK = threading.Lock()


def _publisher(settings: Settings) -> Publish:
    # Imported here, not at the top: the web app calls this module and must not load
    # Celery until an operator hands an edition out (tests/test_layers.py).
    from worker.celery_app import create_app, publisher

    with _APPS_LOCK:
        app = _APPS.get(settings.broker_url)
        if app is None:
            app = _APPS[settings.broker_url] = create_app(settings)
    return publisher(app)


def hand_out(engine: Engine, settings: Settings, edition_id: int, *, now: datetime | None = None) -> int:
    """The edition's due rows to the broker, in batches of ids; the number of batches.
    Raises BrokerUnreachable when the broker cannot take them."""
    try:
        return dispatch(engine, settings, edition_id, _publisher(settings), now or utcnow())
    except Exception as exc:  # noqa: BLE001 - kombu raises OperationalError and friends
        raise BrokerUnreachable(settings.broker_url, exc) from None


def run_inline(engine: Engine, settings: Settings, edition_id: int) -> list[BatchReport]:
    """Everything due in the edition, sent from this process, without a broker."""
    sender = make_sender_pool(settings)
    try:
        return _run_inline(engine, settings, edition_id, sender)
    finally:
        sender.close()


# Following an edition: how often it looks, and how often it hands out retries that came due.
FOLLOW_POLL_SECONDS = 0.5
FOLLOW_REDISPATCH_SECONDS = 2.0


def follow(engine: Engine, settings: Settings, edition_id: int) -> Iterator[Progress]:
    """The edition's progress, twice a second, until nothing is open. Meanwhile it hands
    out retries that come due, as the reconciler would, so following ends even where no
    beat runs. Rows waiting for their reader's morning may be hours away: following stops
    when only they are left."""
    last_hand_out = time.monotonic()
    while True:
        progress = edition_progress(engine, edition_id, now=utcnow())
        if progress is None:
            return
        yield progress
        if progress.state is not EditionState.SENDING or progress.open_rows in (0, progress.waiting_for_hour):
            return
        time.sleep(FOLLOW_POLL_SECONDS)
        if time.monotonic() - last_hand_out > FOLLOW_REDISPATCH_SECONDS:
            hand_out(engine, settings, edition_id)
            last_hand_out = time.monotonic()


# -- trying it out ---------------------------------------------------------------------


@dataclass(frozen=True)
class DrySet:
    regions: str                      # the region set, codes separated by spaces
    subscribers: int
    variant: RenderedVariant | None   # None: no stories for it, its readers are skipped (no-stories)


@dataclass(frozen=True)
class DryRun:
    """What `send` with the same options would do; nothing was sent or recorded."""

    key: str                                  # the key a send would use (the next -force-N with force)
    window: Window
    existing: EditionStatus | None = None     # the edition that exists, when a send would do nothing
    retry: int | None = None                  # retry: the failed rows it would re-queue...
    state: EditionState | None = None         # ...of the edition in this state
    next_force_key: str | None = None
    overlaps: tuple[Overlap, ...] = ()
    sets: tuple[DrySet, ...] = ()

    @property
    def sending(self) -> int:
        return sum(s.subscribers for s in self.sets if s.variant is not None)

    @property
    def skipped(self) -> int:
        return sum(s.subscribers for s in self.sets if s.variant is None)

    @property
    def largest_clipped(self) -> RenderedVariant | None:
        """The largest variant, when any would be clipped by Gmail."""
        variants = [s.variant for s in self.sets if s.variant is not None]
        if not any(v.clipped for v in variants):
            return None
        return max(variants, key=lambda v: v.html_bytes)


def dry_run(engine: Engine, settings: Settings, target: Target, regions: tuple[str, ...] | None, *,
            force: bool = False, retry: bool = False) -> DryRun:
    """For an edition that exists that is "nothing" (or the failed rows it would re-queue),
    not the count of a fresh plan: only `force` plans anew."""
    key, window = target.key, target.window
    existing = find_edition(engine, key)
    if retry:
        if existing is None:
            raise UsageError(f"no edition {key!r} to retry")
        return DryRun(key, window, retry=count_failed(engine, existing.id), state=EditionState(existing.state))
    if existing is not None and not force:
        return DryRun(key, window, existing=status(engine, existing.id), next_force_key=next_force_key(engine, key))
    if existing is not None:
        key = next_force_key(engine, key)
    sets = _active_sets(engine)
    if regions is not None:
        sets = [(r, n) for r, n in sets if tuple(r.split()) == regions]
    renderer = draft_renderer(engine, settings, window=window, edition_key=key)
    with session_scope(engine) as session:
        with_stories = region_sets_with_stories(session, window, [r for r, _ in sets])
        overlaps = overlapping_editions(session, window, key=original_key(key))
    return DryRun(key, window, overlaps=tuple(overlaps), sets=tuple(
        DrySet(r, n, renderer.variant(tuple(r.split())) if r in with_stories else None) for r, n in sets))


def _active_sets(engine: Engine) -> list[tuple[str, int]]:
    """Active subscribers' region sets, the commonest first."""
    with session_scope(engine) as session:
        return list(session.execute(
            select(Subscriber.regions, func.count()).where(Subscriber.status == SubscriberStatus.ACTIVE.value)
            .group_by(Subscriber.regions).order_by(func.count().desc(), Subscriber.regions)).all())


@dataclass(frozen=True)
class TestCopy:
    __test__ = False  # not a pytest test class, whatever its name

    address: str
    outcome: Outcome
    summary: str


def send_test_copies(engine: Engine, settings: Settings, target: Target, addresses: list[str],
                     regions: tuple[str, ...] | None) -> list[TestCopy]:
    """The edition's digest for `regions` (default: the commonest set) to each address,
    marked as a test; no subscriber's ledger is touched."""
    secret = settings.require_secret_key()
    if regions is None:
        sets = _active_sets(engine)
        if not sets:
            raise UsageError("no active subscribers to take a region set from: give --regions")
        regions = tuple(sets[0][0].split())
    checked = []
    for address in addresses:
        try:
            checked.append(check_address(address)[0])
        except InvalidSubscriber as exc:
            raise UsageError(f"--to: {exc}") from None
    variant = draft_renderer(engine, settings, window=target.window, edition_key=target.key).variant(regions)
    if variant is None:
        raise UsageError(f"no stories for {' '.join(regions)} in {target.window.label}")
    sender = make_sender(settings)
    copies = []
    try:
        for address in checked:
            composed = compose(variant, Addressee(address, None, None), settings=settings, secret=secret,
                               test_send=True, now=utcnow())
            result = sender.send(Outgoing(settings.sender.addr_spec, composed.envelope_to,
                                          composed.data, composed.message_id, composed.smtputf8))
            copies.append(TestCopy(address, result.outcome, result.summary))
    finally:
        sender.close()
    return copies


# -- pause, resume, retry --------------------------------------------------------------


def count_failed(engine: Engine, edition_id: int) -> int:
    """The failed rows `--retry-failed` would put back (one query)."""
    return count_in_state(engine, edition_id, DeliveryState.FAILED)


def pause(engine: Engine, key: str, *, reason: str = "paused by operator") -> EditionState | None:
    """Stop handing out the edition's batches; None when paused, else the state it is in
    (only a sending edition can be paused)."""
    edition = require_edition(engine, key)
    return None if pause_edition(engine, edition.id, reason) else EditionState(edition.state)


class Resumed(StrEnum):
    RESUMED = "resumed"              # it was paused: it sends again
    STILL_SENDING = "still-sending"  # it was sending: its due rows are handed out now
    REFUSED = "refused"              # done, held or skipped: nothing to resume


@dataclass(frozen=True)
class Resume:
    outcome: Resumed
    key: str
    edition_id: int
    state: EditionState
    failed: int = 0   # REFUSED, done: failed rows `--retry-failed` would put back


def resume(engine: Engine, key: str) -> Resume:
    """Continue an edition from the ledger; deliver it next (`hand_out` or `run_inline`)."""
    edition = require_edition(engine, key)
    state = EditionState(edition.state)
    if resume_edition(engine, edition.id):
        return Resume(Resumed.RESUMED, edition.key, edition.id, EditionState.SENDING)
    if state is EditionState.SENDING:
        return Resume(Resumed.STILL_SENDING, edition.key, edition.id, state)
    failed = count_failed(engine, edition.id) if state is EditionState.DONE else 0
    return Resume(Resumed.REFUSED, edition.key, edition.id, state, failed)


# -- where it stands -------------------------------------------------------------------


@dataclass(frozen=True)
class FullStatus:
    """An edition's counts and the whereabouts of its open and failed rows."""

    status: EditionStatus
    # Failures by reply, leases by worker, rows waiting for the broker or their hour
    # (worker/delivery/status.py: edition_whereabouts), JSON-ready.
    whereabouts: Mapping[str, Any]
    at: datetime   # when it was read: what "in 5 min" and "ago" count from
    # Held: the subscribers approving it would send to now (its rows are those of the hold).
    approval_sends: int | None = None

    def to_json(self) -> dict[str, Any]:
        data = {**self.status.to_json(), **self.whereabouts}
        if self.approval_sends is not None:
            data["approval_sends"] = self.approval_sends
        return data


def find(engine: Engine, key: str) -> Edition | None:
    return find_edition(engine, key)


def require(engine: Engine, key: str) -> Edition:
    """The edition by that key; UsageError naming the key it may mean (`2025-W05` for
    `weekly-2025-W05`) when there is none."""
    return require_edition(engine, key)


def _row(engine: Engine, edition: int | str | Edition) -> Edition:
    if isinstance(edition, int):
        return get_edition(engine, edition)
    return require_edition(engine, edition) if isinstance(edition, str) else edition


def status(engine: Engine, edition: int | str | Edition, *, list_unknown: int = 0) -> EditionStatus:
    """An edition's counts (by id, key or row), listing up to `list_unknown` unknown rows."""
    return edition_status(engine, _row(engine, edition), list_unknown=list_unknown)


def full_status(engine: Engine, settings: Settings, edition: int | str | Edition, *,
                now: datetime | None = None) -> FullStatus:
    row = _row(engine, edition)
    now = now or utcnow()
    held = row.state == EditionState.HELD.value
    return FullStatus(
        edition_status(engine, row),
        edition_whereabouts(engine, row.id, now=now, redispatch_after=settings.redispatch_after,
                            liveness_timeout=settings.liveness_timeout),
        now, approval_sends(engine, row) if held else None)


def recent(engine: Engine, limit: int = 20) -> list[EditionStatus]:
    """The editions created last, newest first."""
    return [edition_status(engine, e, list_unknown=0) for e in recent_editions(engine, limit)]


# Unfinished editions are a handful; a page of them is still bounded if something piles them up.
MAX_UNFINISHED = 200
_UNFINISHED = (EditionState.SENDING.value, EditionState.PAUSED.value, EditionState.HELD.value)


def overview(engine: Engine, *, recent_limit: int = 20) -> list[EditionStatus]:
    """Every unfinished edition and the ones created last, newest first."""
    with session_scope(engine) as session:
        unfinished = list(session.scalars(select(Edition).where(Edition.state.in_(_UNFINISHED))
                                          .order_by(Edition.created_at.desc(), Edition.id.desc())
                                          .limit(MAX_UNFINISHED)))
    listed = {e.id: e for e in [*unfinished, *recent_editions(engine, recent_limit)]}
    ordered = sorted(listed.values(), key=lambda e: (e.created_at, e.id), reverse=True)
    return [edition_status(engine, e, list_unknown=0) for e in ordered]


def approval_sends(engine: Engine, edition: str | Edition) -> int:
    """How many subscribers approving a held edition sends to: approval plans its rows
    again from the stories and subscribers stored now (worker/delivery/plan.py)."""
    row = find_edition(engine, edition) if isinstance(edition, str) else edition
    return recipients_now(engine, Window.of_edition(row)) if row is not None else 0


def recipients(engine: Engine, window: Window) -> int:
    """Active subscribers with a story in their regions in `window`: who a plan made now sends to."""
    return recipients_now(engine, window)


def guard_view(engine: Engine, settings: Settings, window: Window, *, key: str,
               allow_overlap: bool = False) -> WeekCheck:
    """What the guard (worker/delivery/guard.py) sees for the window, as a scheduled send
    would check it, review mode aside: a person sending by hand is the review."""
    return check_week(engine, settings.model_copy(update={"review": False}), window, key=key,
                      allow_overlap=allow_overlap)


def window_story_count(engine: Engine, window: Window) -> int:
    with session_scope(engine) as session:
        return len(fetch_window_stories(session, window))


# -- what the worker runs --------------------------------------------------------------


def reconcile(engine: Engine, settings: Settings, publish: Publish, *, now: datetime | None = None) -> Reconciled:
    """The tick: plan the week that is due, expire stale leases, hand out due rows, finish
    what is done (worker/delivery/schedule.py)."""
    return _reconcile(engine, settings, publish, now or utcnow())


def recover(engine: Engine, settings: Settings, editions: set[int], publish: Publish) -> int:
    """Hand out again, ahead of the backlog, the rows a dead worker held."""
    return dispatch_recovered(engine, settings, editions, publish, utcnow())

