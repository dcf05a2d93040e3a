"""Which edition a command means, and the decisions on it: plan it or reuse the one that
exists, approve or discard a held one, retry its failures, pause and resume it."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime
from enum import StrEnum
from typing import NamedTuple

from sqlalchemy import Engine

from worker.clock import utcnow
from worker.delivery.plan import (
    approve_edition,
    discard_edition,
    find_edition,
    next_force_key,
    pause_edition,
    plan_edition,
    require_edition,
    resume_edition,
)
from worker.delivery.plan import retry_failed as _requeue_failed
from worker.delivery.schedule import release_local_send
from worker.delivery.status import EditionStatus, count_in_state
from worker.digest import Window, custom_window
from worker.editions.standing import status
from worker.errors import UsageError
from worker.operators.audit import audit
from worker.preview import resolve_week, weekly_edition_key
from worker.settings import Settings
from worker.store.models import DeliveryState, EditionState

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
                  continue_open: bool = False, now: datetime | None = None, wider: bool = False) -> Plan:
    """The edition to deliver, planned now, or what happened to the one that exists.

    An edition that exists is only reported, unless `retry` (its failed rows go back to
    pending), `force` (a new key) or `continue_open` (it is still sending: deliver its due
    rows now, which --inline and --wait ask for). `wider`: NEWSLETTER_QUIET_WEEK=wider."""
    key, now = target.key, now or utcnow()
    existing = find_edition(engine, key)
    if existing is not None and force:
        new_key = next_force_key(engine, key)
        note = f"forced re-send of {key} by {who} at {now.isoformat()}"
        planned = plan_edition(engine, key=new_key, kind=target.kind, window=target.window, now=now, note=note,
                               wider=wider)
        audit(engine, "edition-forced", new_key, f"a re-send of {key}")
        return _planned(engine, Decision.FORCED, planned.edition_id, note=note)
    if existing is not None and retry:
        count = _requeue_failed(engine, existing.id, now)
        audit(engine, "edition-retried", key, f"{count} failed rows queued again")
        state = EditionState(existing.state)
        go = count and state is not EditionState.PAUSED  # a paused one's rows go after `resume`
        return Plan(Decision.REQUEUED, key, existing.id if go else None, state, existing.reason, requeued=count)
    if existing is not None and existing.state == EditionState.HELD.value:
        return Plan(Decision.HELD, key, None, EditionState.HELD, existing.reason)
    if existing is not None:
        data = status(engine, existing)
        if continue_open and data.state is EditionState.SENDING:
            return Plan(Decision.CONTINUED, key, existing.id, data.state, existing.reason, data)
        return Plan(Decision.EXISTS, key, None, data.state, existing.reason, data)
    if retry:
        raise UsageError(f"no edition {key!r} to retry")
    planned = plan_edition(engine, key=key, kind=target.kind, window=target.window, now=now, wider=wider)
    audit(engine, "edition-planned", key)
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
        moved = approve_edition(engine, edition.id, now=now, who=who, local=release_local_send(edition, settings),
                                wider=settings.wider)
    else:
        moved = discard_edition(engine, edition.id, now=now, who=who)
    if not moved:
        return Release(Released.RACED, edition.key, edition.id)
    audit(engine, "edition-approved" if approve else "edition-discarded", edition.key)
    return Release(Released.APPROVED if approve else Released.DISCARDED, edition.key, edition.id,
                   held_reason=edition.reason)


def count_failed(engine: Engine, edition_id: int) -> int:
    """The failed rows `--retry-failed` would put back (one query)."""
    return count_in_state(engine, edition_id, DeliveryState.FAILED)


def pause(engine: Engine, key: str, *, reason: str = "paused by operator") -> EditionState | None:
    """Stop handing out the edition's batches; None when paused, else the state it is in
    (only a sending edition can be paused)."""
    edition = require_edition(engine, key)
    if not pause_edition(engine, edition.id, reason):
        return EditionState(edition.state)
    audit(engine, "edition-paused", edition.key, reason)
    return None


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
        audit(engine, "edition-resumed", edition.key)
        return Resume(Resumed.RESUMED, edition.key, edition.id, EditionState.SENDING)
    if state is EditionState.SENDING:
        return Resume(Resumed.STILL_SENDING, edition.key, edition.id, state)
    failed = count_failed(engine, edition.id) if state is EditionState.DONE else 0
    return Resume(Resumed.REFUSED, edition.key, edition.id, state, failed)
