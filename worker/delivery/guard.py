"""Does a scheduled week look right? A pure-ish check before the edition is handed out.

A week that looks broken is held with its reasons, not sent (DESIGN.md, guarantees):
an empty week; a followed region far below its own usual count; or no new story for
days before the week ended (ingestion broken); or a window that overlaps an edition that
exists (its readers would get the same stories twice). Review mode holds every scheduled
edition.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from statistics import median

from sqlalchemy import Engine, func, select

from worker.delivery.plan import active_region_sets
from worker.digest import Window, week_of, week_window
from worker.settings import Settings
from worker.store.db import session_scope
from worker.store.models import Edition, EditionState, Story, StoryRegion

# The usual count is the median of this many weeks before: one odd week (a holiday, a
# burst of news) does not move it, and four weeks still follow a site that grows.
HISTORY_WEEKS = 4


@dataclass(frozen=True)
class Overlap:
    """An edition that exists whose window overlaps the one being checked."""

    key: str
    state: str
    label: str
    start: datetime
    end: datetime

    def describe(self, tz) -> str:
        return (f"{self.key} ({self.state}, {self.label}: {self.start.astimezone(tz):%Y-%m-%d %H:%M} to "
                f"{self.end.astimezone(tz):%Y-%m-%d %H:%M %Z})")


@dataclass
class WeekCheck:
    reasons: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)     # followed region: stories this week
    usual: dict[str, float] = field(default_factory=dict)    # followed region: median of the weeks before
    newest: datetime | None = None
    overlaps: list[Overlap] = field(default_factory=list)

    @property
    def hold(self) -> str | None:
        return "; ".join(self.reasons) or None


def check_week(engine: Engine, settings: Settings, window: Window, *, key: str | None = None,
               allow_overlap: bool = False) -> WeekCheck:
    """What the guard sees for the week `window`, and the reasons to hold it (none: send).

    `key` is the edition being checked: it and its forced copies do not count as overlaps.
    With `allow_overlap` overlaps are listed but are no reason to hold."""
    check = WeekCheck()
    with session_scope(engine) as session:
        check.overlaps = overlapping_editions(session, window, key=key)
        followed = sorted({code for regions, _ in active_region_sets(session) for code in regions.split()})
        if not followed:
            return check  # nobody to send to: nothing to hold
        total = _count(session, window)
        counts = _region_counts(session, window)
        history = [_region_counts(session, week) for week in _weeks_before(window, settings)]
        check.newest = session.scalar(select(func.max(Story.published_at)).where(Story.published_at < window.end))
    if not allow_overlap:
        check.reasons.extend(f"overlaps {o.describe(settings.tz)}: its readers would get the same stories twice"
                             for o in check.overlaps)
    if settings.review:
        check.reasons.append("review mode (NEWSLETTER_REVIEW=true): every scheduled edition waits for approval")
    if total == 0:
        check.reasons.append(f"empty week: no stories in {window.label}")
    for region in followed:
        check.counts[region] = counts.get(region, 0)
        check.usual[region] = usual = median([week.get(region, 0) for week in history])
        if total and usual >= settings.hold_min_usual and check.counts[region] < usual * settings.hold_below_ratio:
            check.reasons.append(
                f"{region}: {check.counts[region]} {'story' if check.counts[region] == 1 else 'stories'}, "
                f"far below its usual {usual:g} (median of the last {HISTORY_WEEKS} weeks)")
    if total and settings.hold_stale_days and check.newest is not None:
        quiet = window.end - check.newest
        if quiet > timedelta(days=settings.hold_stale_days):
            check.reasons.append(
                f"no new story for {quiet.total_seconds() / 86400:.1f} days before the week ended "
                f"(newest published {check.newest:%Y-%m-%d %H:%M} UTC; is a feed broken? "
                "`newsletter sources list`)")
    return check


def overlapping_editions(session, window: Window, *, key: str | None = None) -> list[Overlap]:
    """Editions that exist (held, sending, paused or done; not skipped) whose window shares
    an instant with `window`, other than `key` and its forced copies."""
    query = select(Edition).where(Edition.window_start < window.end, Edition.window_end > window.start,
                                  Edition.state != EditionState.SKIPPED.value)
    if key is not None:
        query = query.where(Edition.key != key, ~Edition.key.startswith(f"{key}-force-", autoescape=True))
    return [Overlap(e.key, e.state, e.label, e.window_start, e.window_end)
            for e in session.scalars(query.order_by(Edition.window_start, Edition.id))]


def _weeks_before(window: Window, settings: Settings) -> list[Window]:
    # Noon of the Monday k weeks back: inside that week whatever a DST change did.
    return [week_window(week_of(window.start - timedelta(days=7 * k) + timedelta(hours=12), settings.tz),
                        settings.tz) for k in range(1, HISTORY_WEEKS + 1)]


def _count(session, window: Window) -> int:
    return session.scalar(select(func.count()).select_from(Story).where(
        Story.published_at >= window.start, Story.published_at < window.end)) or 0


def _region_counts(session, window: Window) -> dict[str, int]:
    return dict(session.execute(
        select(StoryRegion.region, func.count(StoryRegion.story_id)).join(Story, Story.id == StoryRegion.story_id)
        .where(Story.published_at >= window.start, Story.published_at < window.end)
        .group_by(StoryRegion.region)).all())
