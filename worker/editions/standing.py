"""Where an edition stands: its counts (EditionStatus), the whereabouts of its open and
failed rows, the editions to list, and what approving a held one would send."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, select

from worker.clock import utcnow
from worker.delivery.guard import WeekCheck, check_week
from worker.delivery.plan import find_edition, get_edition, recipients_now, require_edition
from worker.delivery.status import EditionStatus, edition_status, edition_whereabouts, recent_editions
from worker.digest import Window
from worker.digest.queries import fetch_window_stories
from worker.settings import Settings
from worker.store.db import session_scope
from worker.store.models import Edition, EditionState


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
    """The edition by that key; when there is none, UsageError naming the key it may mean
    (`weekly-2025-W05` for `2025-W05`)."""
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
        now, approval_sends(engine, row, wider=settings.wider) if held else None)


def recent(engine: Engine, limit: int = 20) -> list[EditionStatus]:
    """The editions created last, newest first."""
    return [edition_status(engine, e, list_unknown=0) for e in recent_editions(engine, limit)]


# Unfinished editions are a handful; a page of them is still bounded if something piles them up.
MAX_UNFINISHED = 200
_UNFINISHED = (EditionState.SENDING.value, EditionState.PAUSED.value, EditionState.HELD.value)


def in_view(engine: Engine, *, recent_limit: int = 20) -> list[Edition]:
    """Every unfinished edition and the ones created last, newest first: the editions the
    dashboard shows (it counts them from their tallies, never one status each)."""
    with session_scope(engine) as session:
        unfinished = list(session.scalars(select(Edition).where(Edition.state.in_(_UNFINISHED))
                                          .order_by(Edition.created_at.desc(), Edition.id.desc())
                                          .limit(MAX_UNFINISHED)))
    listed = {e.id: e for e in [*unfinished, *recent_editions(engine, recent_limit)]}
    return sorted(listed.values(), key=lambda e: (e.created_at, e.id), reverse=True)


def approval_sends(engine: Engine, edition: str | Edition, *, wider: bool = False) -> int:
    """How many subscribers approving a held edition sends to: approval plans its rows
    again from the stories and subscribers stored now (worker/delivery/plan.py)."""
    row = find_edition(engine, edition) if isinstance(edition, str) else edition
    return recipients_now(engine, Window.of_edition(row), wider=wider) if row is not None else 0


def recipients(engine: Engine, window: Window, *, wider: bool = False) -> int:
    """Active subscribers with a story in their regions in `window` (`wider`: any story at
    all): who a plan made now sends to."""
    return recipients_now(engine, window, wider=wider)


def guard_view(engine: Engine, settings: Settings, window: Window, *, key: str,
               allow_overlap: bool = False) -> WeekCheck:
    """What the guard (worker/delivery/guard.py) sees for the window, as a scheduled send
    would check it, review mode aside: a person sending by hand is the review."""
    return check_week(engine, settings.model_copy(update={"review": False}), window, key=key,
                      allow_overlap=allow_overlap)


def window_story_count(engine: Engine, window: Window) -> int:
    with session_scope(engine) as session:
        return len(fetch_window_stories(session, window))
