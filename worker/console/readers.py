"""The console's readers, as plain data: a page of the list (search and filters), one
reader's record, and the list as CSV for download.

The list is read in the order of the address key (email_key), a page after the last key
shown (keyset: no OFFSET, no count of the whole list). Searching by part of an address or
a name cannot use a btree index, so a page of a search walks ix_subscribers_search (key,
status, regions, name: migration 0023) in key order, without visiting the table, and
stops at a page of matches or after WINDOW readers, whichever comes first; then the page
says how far it looked and links to the next stretch. A page's cost is bounded by WINDOW
whatever the search matches. A whole address is looked up by its key.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from dataclasses import dataclass

from sqlalchemy import Engine, func, select
from sqlalchemy.sql.elements import ColumnElement

from worker.readers.history import subscriber_record
from worker.readers.subscribers import InvalidSubscriber, check_address, guarded_cell
from worker.readers.zones import reader_zone
from worker.regions import RegionError, normalise_region
from worker.settings import Settings
from worker.store.models import Subscriber, SubscriberStatus

PAGE = 50
# How many readers, in key order, one page of a search or a filter looks through at most.
WINDOW = 100_000
# Readers per query of the CSV export.
EXPORT_CHUNK = 1000
MAX_QUERY = 320
EXPORT_HEADER = ("email", "name", "regions", "timezone", "status")
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


class BadSearch(ValueError):
    """A filter names no status or no region; the message says which."""


@dataclass(frozen=True)
class Search:
    q: str = ""
    status: str = ""
    region: str = ""
    after: str = ""

    @property
    def filtered(self) -> bool:
        return bool(self.q or self.status or self.region)


@dataclass(frozen=True)
class ReaderRow:
    email: str
    email_key: str
    name: str | None
    regions: list[str]
    status: str


@dataclass(frozen=True)
class ReaderPage:
    rows: list[ReaderRow]
    # The `after` of the next page; None: nothing follows.
    next_after: str | None
    # The page stopped after WINDOW readers, not at a page of matches: the last key it read.
    searched_to: str | None = None
    # The search was a whole address, looked up by its key.
    exact: bool = False


@dataclass(frozen=True)
class ReaderRecord:
    """What `newsletter subscribers show` says of one reader."""

    email_key: str
    record: dict
    # The zone their edition is timed by, and where it comes from: 'own', 'region' or 'default'.
    zone: str
    zone_from: str


def make_search(q: str = "", status: str = "", region: str = "", after: str = "") -> Search:
    """The search as asked, checked (BadSearch): a known status, a region code."""
    status = status.strip()
    if status and status not in {s.value for s in SubscriberStatus}:
        raise BadSearch(f"{status[:40]!r} is not a status")
    code = ""
    if region.strip():
        try:
            code = normalise_region(region.strip()[:10])
        except RegionError as exc:
            raise BadSearch(str(exc)) from None
    return Search(q=q.strip()[:MAX_QUERY], status=status, region=code, after=after[:MAX_QUERY])


def find_readers(engine: Engine, search: Search, *, window: int | None = None) -> ReaderPage:
    """One page of the list: every reader exactly once across the pages, in key order."""
    key = _whole_address(search.q)
    with engine.connect() as connection:
        if key is not None:
            query = _display().where(Subscriber.email_key == key, *_filters(Subscriber.__table__.c, search, False))
            return ReaderPage(rows=[_row(r) for r in connection.execute(query)], next_after=None, exact=True)
        if not search.filtered:
            query = _display().where(Subscriber.email_key > search.after).order_by(Subscriber.email_key)
            rows = [_row(r) for r in connection.execute(query.limit(PAGE + 1))]
            return ReaderPage(rows=rows[:PAGE], next_after=rows[PAGE - 1].email_key if len(rows) > PAGE else None)
        return _search(connection, search, window or WINDOW)


def _search(connection, search: Search, window: int) -> ReaderPage:
    stretch = _stretch(search.after, window)
    hits = list(connection.scalars(select(stretch.c.email_key).where(*_filters(stretch.c, search, True))
                                   .order_by(stretch.c.email_key).limit(PAGE + 1)))
    keys = hits[:PAGE]
    rows = [_row(r) for r in connection.execute(
        _display().where(Subscriber.email_key.in_(keys)).order_by(Subscriber.email_key))] if keys else []
    if len(hits) > PAGE:
        return ReaderPage(rows=rows, next_after=keys[-1])
    # Fewer than a page of matches: either the list ended or the stretch did.
    stretch = _stretch(search.after, window)
    read, last = connection.execute(select(func.count(), func.max(stretch.c.email_key))).one()
    if read < window:
        return ReaderPage(rows=rows, next_after=None)
    return ReaderPage(rows=rows, next_after=last, searched_to=last)


def _stretch(after: str, window: int):
    """The next `window` readers after `after`, in key order, as the search index holds them."""
    return (select(Subscriber.email_key, Subscriber.status, Subscriber.regions, Subscriber.name)
            .where(Subscriber.email_key > after).order_by(Subscriber.email_key).limit(window).subquery())


def _filters(columns, search: Search, by_part: bool) -> list[ColumnElement[bool]]:
    """The search's conditions, every value a bound parameter."""
    found: list[ColumnElement[bool]] = []
    if by_part and search.q:
        # Keys have their ASCII letters in lower case; % _ and \\ typed are themselves.
        text = search.q.translate(_ASCII_LOWER)
        pattern = "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        found.append(columns.email_key.like(pattern, escape="\\")
                     | func.lower(columns.name).like(pattern, escape="\\"))
    if search.status:
        found.append(columns.status == search.status)
    if search.region:
        # Regions are one text value ("RU UA"); padded with spaces, a code matches whole.
        found.append((" " + columns.regions + " ").like(f"% {search.region} %"))
    return found


def _whole_address(q: str) -> str | None:
    """The key of a search that is a whole address, else None (a part of one, or a name)."""
    if "@" not in q:
        return None
    try:
        return check_address(q)[1]
    except InvalidSubscriber:
        return None


def _display():
    return select(Subscriber.email, Subscriber.email_key, Subscriber.name, Subscriber.regions, Subscriber.status)


def _row(r) -> ReaderRow:
    return ReaderRow(email=r.email, email_key=r.email_key, name=r.name, regions=r.regions.split(), status=r.status)


def reader_record(engine: Engine, settings: Settings, address: str, *, deliveries: int = 20) -> ReaderRecord | None:
    """One reader's record (worker.readers.history.subscriber_record) and their zone, as
    `subscribers show` tells it; None when the address is not one or nobody has it."""
    try:
        _, key = check_address(address[:MAX_QUERY])
    except InvalidSubscriber:
        return None
    record = subscriber_record(engine, key, deliveries=deliveries)
    if record is None:
        return None
    with engine.connect() as connection:
        stored = connection.scalar(select(Subscriber.timezone).where(Subscriber.email_key == key))
    zone, source = reader_zone(stored, record["regions"], region_zones=settings.region_timezones,
                               default=settings.timezone)
    record["timezone"] = stored
    return ReaderRecord(email_key=key, record=record, zone=zone, zone_from=source)


def export_csv(engine: Engine, *, chunk: int | None = None) -> Iterator[str]:
    """The whole list as CSV text, a chunk of readers at a time (keyset on the key): the
    list is never in memory at once. Every cell goes through `guarded_cell`: one that a
    spreadsheet would run as a formula (= + - @ first) is written with a leading '
    (CSV injection); the import takes it off again."""
    chunk = chunk or EXPORT_CHUNK
    yield _csv_line(EXPORT_HEADER)
    after = ""
    while True:
        with engine.connect() as connection:
            rows = connection.execute(
                select(Subscriber.email_key, Subscriber.email, Subscriber.name, Subscriber.regions,
                       Subscriber.timezone, Subscriber.status)
                .where(Subscriber.email_key > after).order_by(Subscriber.email_key).limit(chunk)).all()
        if not rows:
            return
        yield "".join(_csv_line((r.email, r.name or "", r.regions, r.timezone or "", r.status)) for r in rows)
        after = rows[-1].email_key


def _csv_line(cells) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="\r\n").writerow([guarded_cell(cell) for cell in cells])
    return out.getvalue()
