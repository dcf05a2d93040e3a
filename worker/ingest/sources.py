"""Sources: feeds polled on a schedule with conditional GET, and their health.

Beat is only a tick (worker/delivery/schedule.py calls poll_due_sources every minute);
the `sources` table decides what is due. A source is claimed by moving its next poll
time forward with a compare-and-set, so two ticks or two workers never fetch it at once.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import Engine, or_, select, update
from sqlalchemy.exc import IntegrityError

from worker.ingest.fetch import FETCH_DEADLINE, SourceError, fetch_source
from worker.ingest.importer import MAX_REASON, Rejection, import_data
from worker.operators.audit import audit
from worker.redact import mask_url
from worker.settings import Settings
from worker.store.db import session_scope
from worker.store.models import Source
from worker.text import single_line

log = logging.getLogger(__name__)

# While failing, a source waits interval × 2^(failures-1), at most this long: a feed down
# for a day is still tried a few times that day, and a fixed one is back within 6 h (the
# poll just before a weekly edition is planned tries every source regardless).
MAX_BACKOFF = timedelta(hours=6)
# A claimed poll is given this long before another tick may take the source: the fetch's
# own deadline, and time to store what came.
CLAIM = timedelta(seconds=FETCH_DEADLINE + 60)


@dataclass
class PollResult:
    url: str
    outcome: str  # 'unchanged', 'read', 'failed'
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    rejected: list[Rejection] = field(default_factory=list)
    error: str | None = None
    failures: int = 0
    next_poll_at: datetime | None = None

    def __str__(self) -> str:
        url = mask_url(self.url)  # printed by `sources poll` and logged by the worker
        if self.outcome == "unchanged":
            return f"{url}: not modified"
        if self.outcome == "failed":
            return (f"{url}: failed: {self.error} ({self.failures} in a row; "
                    f"next try {_when(self.next_poll_at)})")
        return (f"{url}: {self.added} added, {self.updated} updated, {self.unchanged} unchanged, "
                f"{len(self.rejected)} rejected")


def _when(moment: datetime | None) -> str:
    return f"{moment:%Y-%m-%d %H:%M:%S} UTC" if moment else "at the next poll"


class SourceExists(Exception):
    pass


def add_source(engine: Engine, url: str, *, region: str | None = None, origin: str = "cli") -> Source:
    try:
        with session_scope(engine) as session:
            row = Source(url=url, region=region, origin=origin, items_added=0, last_rejected=0,
                         consecutive_failures=0)
            session.add(row)
            session.flush()
            audit(session, "source-added", mask_url(url), region)
        return row
    except IntegrityError:
        raise SourceExists(url) from None


def remove_source(engine: Engine, url: str) -> Source | None:
    """The source whose URL is `url`, or whose URL is shown as `url` (masked, as `sources list`
    prints it) when only one is, removed."""
    with session_scope(engine) as session:
        row = session.scalar(select(Source).where(Source.url == url))
        if row is None:
            shown = [r for r in session.scalars(select(Source)) if mask_url(r.url) == url]
            row = shown[0] if len(shown) == 1 else None
        if row is not None:
            session.delete(row)
            audit(session, "source-removed", mask_url(row.url))
        return row


def list_sources(engine: Engine) -> list[Source]:
    with session_scope(engine) as session:
        return list(session.scalars(select(Source).order_by(Source.id)))


def sync_config_sources(engine: Engine, settings: Settings) -> None:
    """[[sources]] of the config file become rows (their region follows the file); a
    source dropped from the file stops being polled."""
    wanted = {entry["url"]: entry.get("region") for entry in settings.sources}
    with session_scope(engine) as session:
        rows = {row.url: row for row in session.scalars(select(Source))}
        for url, region in wanted.items():
            row = rows.get(url)
            if row is None:
                session.add(Source(url=url, region=region, origin="config", items_added=0, last_rejected=0,
                                   consecutive_failures=0))
            elif row.origin == "config" and row.region != region:
                row.region = region
        for url, row in rows.items():
            if row.origin == "config" and url not in wanted:
                session.delete(row)
    # Two processes adding the same new config source: one insert loses, the row is there.


def poll_due_sources(engine: Engine, settings: Settings, now: datetime) -> list[PollResult]:
    """Poll every source whose next poll time has come (beat's tick)."""
    try:
        sync_config_sources(engine, settings)
    except IntegrityError:
        pass
    with session_scope(engine) as session:
        due = list(session.scalars(select(Source.id).where(
            or_(Source.next_poll_at.is_(None), Source.next_poll_at <= now)).order_by(Source.id)))
    return [r for r in (_poll_claimed(engine, settings, sid, now, force=False) for sid in due) if r]


def poll_all_sources(engine: Engine, settings: Settings, now: datetime) -> list[PollResult]:
    """Poll every source now, due or not (`sources poll`, and just before a weekly edition
    is planned). Still conditional: an unchanged feed is one 304."""
    try:
        sync_config_sources(engine, settings)
    except IntegrityError:
        pass
    with session_scope(engine) as session:
        ids = list(session.scalars(select(Source.id).order_by(Source.id)))
    return [r for r in (_poll_claimed(engine, settings, sid, now, force=True) for sid in ids) if r]


def _poll_claimed(engine: Engine, settings: Settings, source_id: int, now: datetime, *,
                  force: bool) -> PollResult | None:
    with session_scope(engine) as session:
        claim = update(Source).where(Source.id == source_id)
        if not force:
            claim = claim.where(or_(Source.next_poll_at.is_(None), Source.next_poll_at <= now))
        if not session.execute(claim.values(next_poll_at=now + CLAIM)).rowcount:
            return None  # another tick took it, or it was removed
        row = session.get(Source, source_id)
        url, region, etag, last_modified = row.url, row.region, row.etag, row.last_modified
    return poll_source(engine, settings, source_id=source_id, url=url, region=region, etag=etag,
                       last_modified=last_modified, now=now)


def poll_source(engine: Engine, settings: Settings, *, source_id: int, url: str, region: str | None,
                etag: str | None, last_modified: str | None, now: datetime) -> PollResult:
    interval = timedelta(minutes=settings.sources_poll_minutes)
    try:
        fetched = fetch_source(url, etag=etag, last_modified=last_modified,
                               allow_private=settings.fetch_allow_private)
    except SourceError as exc:
        return _failed(engine, source_id, url, str(exc), now=now, interval=interval)
    except Exception as exc:  # noqa: BLE001 - one source's surprise must not stop the others or the tick
        log.exception("polling %s", mask_url(url))
        return _failed(engine, source_id, url, f"internal error ({type(exc).__name__}: {exc})", now=now,
                       interval=interval)
    result = PollResult(url, "unchanged" if fetched.not_modified else "read", next_poll_at=now + interval)
    values = {"last_polled_at": now, "last_success_at": now, "consecutive_failures": 0, "last_error": None,
              "next_poll_at": now + interval,
              # A 304 need not repeat the validators: keep the ones that earned it.
              "etag": fetched.etag or (etag if fetched.not_modified else None),
              "last_modified": fetched.last_modified or (last_modified if fetched.not_modified else None)}
    if not fetched.not_modified:
        report = import_data(engine, url, fetched.body, default_region=region)
        result.added, result.updated, result.unchanged = report.added, report.updated, report.unchanged
        result.rejected = report.rejected
        whole = [r for r in report.rejected if not r.position]
        # The body was read but is not a feed: a failure, and no validators kept.
        if whole and not (report.added or report.updated or report.unchanged):
            result.rejected = [r for r in report.rejected if r.position]
            return _failed(engine, source_id, url, whole[0].reason, now=now, interval=interval, result=result)
        values["last_rejected"] = len(report.rejected)
        values["items_added"] = Source.items_added + report.added
    # Validators saved only now, with the stories they came with (see Source).
    with session_scope(engine) as session:
        session.execute(update(Source).where(Source.id == source_id).values(**values))
    return result


def _failed(engine: Engine, source_id: int, url: str, reason: str, *, now: datetime, interval: timedelta,
            result: PollResult | None = None) -> PollResult:
    reason = single_line(reason)[:MAX_REASON]
    with session_scope(engine) as session:
        row = session.get(Source, source_id)
        failures = (row.consecutive_failures if row else 0) + 1
        wait = min(interval * 2 ** min(failures - 1, 20), MAX_BACKOFF)
        if row is not None:
            row.consecutive_failures = failures
            row.last_error, row.last_error_at, row.last_polled_at = reason, now, now
            row.next_poll_at = now + wait
    result = result or PollResult(url, "failed")
    result.outcome, result.error, result.failures, result.next_poll_at = "failed", reason, failures, now + wait
    return result


def describe(rows: Iterable[Source]) -> list[dict]:
    """Sources and their health as JSON-ready dicts (`sources list --json`): URLs as shown
    (credentials masked), times in UTC with their offset."""
    def iso(value: datetime | None) -> str | None:
        return value.isoformat() if value else None

    return [{"url": mask_url(r.url), "region": r.region, "origin": r.origin, "last_success": iso(r.last_success_at),
             "last_error": r.last_error, "last_error_at": iso(r.last_error_at), "items_added": r.items_added,
             "last_rejected": r.last_rejected, "consecutive_failures": r.consecutive_failures,
             "next_poll": iso(r.next_poll_at), "etag": r.etag, "last_modified": r.last_modified}
            for r in rows]
