"""Liveness of the worker and of beat, as `newsletter health worker|beat` checks it.

What proves each one alive is something it can only do while it works:

- **worker**: each pool process renews its row in `workers` every few seconds
  (worker/delivery/liveness.py) from a thread that needs the database, the same
  heartbeat the other workers judge it by. Healthy: a row of this host (names are
  `host:pid`) renewed within NEWSLETTER_LIVENESS_SECONDS. A stopped, hung or
  database-less worker stops renewing; a row older than that is the one another worker
  is about to call dead and whose rows it hands out again.
- **beat**: the scheduler touches `<schedule file>.alive` each time it has handed a task
  to the broker (celery_app.Scheduler), and the reconcile tick is due every minute.
  Healthy: that file is younger than `max_age`. A beat that is hung, or cannot reach
  the broker, stops touching it. (The schedule file itself is written only when
  Celery syncs it, every few minutes, and not at all while nothing changes.)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import Engine, func, select

from worker.store.db import session_scope
from worker.store.models import Worker

ALIVE_SUFFIX = ".alive"
# Three missed reconcile ticks (one a minute): a slow broker round trip is not a death.
BEAT_MAX_AGE = timedelta(minutes=3)


@dataclass(frozen=True)
class Health:
    ok: bool
    message: str


def beat_alive_path(schedule: str | Path) -> Path:
    return Path(f"{schedule}{ALIVE_SUFFIX}")


def touch_beat(schedule: str | Path) -> None:
    """Beat handed a task to the broker just now."""
    path = beat_alive_path(schedule)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()


def check_beat(schedule: str | Path, *, now: datetime, max_age: timedelta = BEAT_MAX_AGE) -> Health:
    path = beat_alive_path(schedule)
    try:
        touched = datetime.fromtimestamp(os.stat(path).st_mtime, UTC)
    except FileNotFoundError:
        return Health(False, f"beat has handed no task to the broker yet ({path} does not exist)")
    except OSError as exc:
        return Health(False, f"cannot read {path}: {exc.strerror}")
    age = now - touched
    if age > max_age:
        return Health(False, f"beat last handed a task to the broker {_seconds(age)} ago, at "
                             f"{touched:%Y-%m-%d %H:%M:%S} UTC (more than {_seconds(max_age)}): hung, or the "
                             "broker is unreachable")
    return Health(True, f"beat handed a task to the broker {_seconds(age)} ago")


def check_worker(engine: Engine, *, host: str, now: datetime, max_age: timedelta) -> Health:
    """A heartbeat of `host` (any of its pool processes) within `max_age`."""
    with session_scope(engine) as session:
        newest, count = session.execute(
            select(func.max(Worker.heartbeat_at), func.count()).where(Worker.name.like(f"{_escape(host)}:%",
                                                                                        escape="\\"))).one()
    if newest is None:
        return Health(False, f"no worker process of {host} beats in the database (none started, or all "
                             "declared dead)")
    age = now - newest
    if age > max_age:
        return Health(False, f"the newest heartbeat of {host}'s {_processes(count)} is {_seconds(age)} old "
                             f"(more than {_seconds(max_age)}): hung, or cut off from the database")
    return Health(True, f"{_processes(count)} of {host}; the newest heartbeat is {_seconds(age)} old")


def _processes(count: int) -> str:
    return f"{count} worker process{'' if count == 1 else 'es'}"


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _seconds(delta: timedelta) -> str:
    return f"{max(delta.total_seconds(), 0):.0f} s"
