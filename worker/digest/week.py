"""ISO weeks in a local time zone, as UTC half-open windows [start, end)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Protocol
from zoneinfo import ZoneInfo

_WEEK = re.compile(r"^(\d{4})-W(\d{2})$")
# The last instant inside a half-open window [start, end): datetimes resolve microseconds.
_LAST_INSTANT = timedelta(microseconds=1)


class StoredWindow(Protocol):
    """What an edition row (worker/store/models.py: Edition) keeps of its window."""

    window_start: datetime
    window_end: datetime
    label: str


@dataclass(frozen=True)
class Window:
    """A half-open UTC interval [start, end) with the label users see."""

    start: datetime
    end: datetime
    label: str
    # The local dates shown to readers (first and last day covered).
    first_day: date
    last_day: date

    def contains(self, moment: datetime) -> bool:
        return self.start <= moment < self.end

    @classmethod
    def of_edition(cls, edition: StoredWindow, tz: ZoneInfo | None = None) -> Window:
        """An edition's stored window, its days read in `tz` (the configured zone; UTC when
        not given, for queries, which read only start and end). The last day is the one
        the window's last instant falls on: for a window planned from local midnights
        (week_window, custom_window) the same days they gave it."""
        zone = tz or UTC
        return cls(start=edition.window_start, end=edition.window_end, label=edition.label,
                   first_day=edition.window_start.astimezone(zone).date(),
                   last_day=(edition.window_end - _LAST_INSTANT).astimezone(zone).date())


def parse_week(text: str) -> tuple[int, int]:
    """'2025-W05' -> (2025, 5); ValueError if the week does not exist."""
    match = _WEEK.match(text.strip())
    if not match:
        raise ValueError(f"week must look like 2025-W05, got {text!r}")
    year, week = int(match[1]), int(match[2])
    if not 1900 <= year <= 9998:  # the window's end must be a date Python can hold
        raise ValueError(f"{text}: the year must be between 1900 and 9998")
    try:
        date.fromisocalendar(year, week, 1)
    except ValueError:
        raise ValueError(f"{text} does not exist: {year} has no ISO week {week}") from None
    return year, week


def _local_midnight(day: date, tz: ZoneInfo) -> datetime:
    # zoneinfo resolves the wall time with fold=0; midnight is never skipped by
    # the zones we know of, and if it were, astimezone still gives one instant.
    return datetime.combine(day, time(0), tzinfo=tz).astimezone(UTC)


def week_window(week: str, tz: ZoneInfo) -> Window:
    """Monday 00:00 to the next Monday 00:00, local time, as UTC."""
    year, number = parse_week(week)
    monday = date.fromisocalendar(year, number, 1)
    next_monday = monday + timedelta(days=7)
    return Window(
        start=_local_midnight(monday, tz),
        end=_local_midnight(next_monday, tz),
        label=f"{year}-W{number:02d}",
        first_day=monday,
        last_day=next_monday - timedelta(days=1),
    )


def custom_window(since: date, until: date, tz: ZoneInfo) -> Window:
    """[since 00:00, until 00:00) local time, for manual editions."""
    if until <= since:
        raise ValueError(f"--until ({until}) must be after --since ({since})")
    return Window(
        start=_local_midnight(since, tz),
        end=_local_midnight(until, tz),
        label=f"{since.isoformat()}..{until.isoformat()}",
        first_day=since,
        last_day=until - timedelta(days=1),
    )


def week_of(moment: datetime, tz: ZoneInfo) -> str:
    """The ISO week label that contains `moment` in zone `tz`."""
    year, number, _ = moment.astimezone(tz).isocalendar()
    return f"{year}-W{number:02d}"


def previous_week(now: datetime, tz: ZoneInfo) -> str:
    """The week that ended most recently before `now`: what Monday's send covers."""
    local = now.astimezone(tz)
    return week_of(datetime.combine(local.date() - timedelta(days=7), time(12), tzinfo=tz), tz)
