"""An edition's tallies (worker/delivery/tallies.py): counted once a finished edition is
counted, stored, and forgotten in the transaction of every change to its rows (a late
bounce, a review made permanent, deciding unknown rows, a retry, a purge), so what the
console shows of a finished edition is always what a fresh count says; a live edition is
counted at each look, never stored; a large live one is not counted on the dashboard."""

from __future__ import annotations

import logging
import re
import threading
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from tests.bounce_support import RETURN_PATH, dsn
from tests.support.data import add_subscribers, delivery_rows, load_stories
from tests.support.web import REMOTE, web_client
from worker.bounces.apply import apply_report, decide
from worker.bounces.reports import read_report
from worker.console import dashboard as dashboard_module
from worker.console.dashboard import dashboard
from worker.console.editions import edition_report
from worker.delivery.plan import discard_edition, find_edition, finish_if_done, plan_edition, retry_failed
from worker.delivery.resolve import Resolution, resolve_unknown
from worker.delivery.tallies import count_tallies, forget, make_tallies, tallies_for
from worker.digest import week_window
from worker.operators.accounts import add_operator
from worker.readers.subscribers import purge_subscriber
from worker.store.db import session_scope
from worker.store.models import BounceEvent, Delivery, Edition, EditionTally

KEY, OTHER = "weekly-2025-W05", "manual-2025-W05-force-2"
NOW = datetime(2025, 2, 3, 7, 0, tzinfo=UTC)
DONE_AT = NOW + timedelta(hours=1)
# reader n is in add_subscribers' REGION_SETS[n % 8]; readers 7 and 15 (JP) have no stories: skipped.
SENT, FAILED, BOUNCED, UNKNOWN = (0, 1, 2, 3, 11, 12, 13, 14), (4, 5, 6), (8,), (9, 10)
FIELDS = ("counts", "retry_scheduled", "skips", "codes", "sets", "first_id", "span", "minutes", "reasons")


def _email(n: int) -> str:
    return f"reader{n}@example.org"


def _send(engine, key: str) -> None:
    """Every row of the edition ends: sent a minute apart, failed for good, bounced, unknown."""
    rows = delivery_rows(engine, key)
    changes = [({"state": "sent", "last_code": 250, "last_reply": f"250 2.0.0 Ok: queued as Q{n}",
                 "sent_at": NOW + timedelta(minutes=n)}, n) for n in SENT]
    changes += [({"state": "failed", "last_code": 421, "last_reply": "421 4.7.0 try again later"}, n)
                for n in FAILED]
    changes += [({"state": "bounced", "last_code": 550, "last_reply": "550 5.1.1 no such user"}, n) for n in BOUNCED]
    changes += [({"state": "unknown", "last_reply": "connection lost after DATA"}, n) for n in UNKNOWN]
    with session_scope(engine) as session:
        for values, n in changes:
            session.execute(sa.update(Delivery).where(Delivery.id == rows[_email(n)].id).values(**values))


@pytest.fixture
def world(engine, settings, tmp_path):
    """Two editions to the same 16 readers, sent and finished (done), and an operator."""
    load_stories(engine, tmp_path)
    add_subscribers(engine, 16)
    window = week_window("2025-W05", settings.tz)
    for key in (KEY, OTHER):
        plan_edition(engine, key=key, kind="weekly", window=window, now=NOW)
        _send(engine, key)
        assert finish_if_done(engine, find_edition(engine, key).id, DONE_AT)
    token = add_operator(engine, "anna")
    return engine, settings, {"Authorization": f"Bearer {token}"}


def _stored(engine, key: str) -> EditionTally | None:
    with session_scope(engine) as session:
        return session.scalar(sa.select(EditionTally).join(Edition, Edition.id == EditionTally.edition_id)
                              .where(Edition.key == key))


def _shown(tallies) -> dict:
    return {name: getattr(tallies, name) for name in FIELDS}


def _fresh(engine, key: str) -> dict:
    with session_scope(engine) as session:
        return _shown(count_tallies(session, find_edition(engine, key).id))


def _as_console_reads(engine, key: str):
    return tallies_for(engine, find_edition(engine, key))


def _page_count(world, state: str, key: str = KEY) -> int:
    engine, settings, auth = world
    html = web_client(engine, settings).get(f"/operator/editions/{key}", environ_base=REMOTE, headers=auth).text
    found = re.search(rf'<th scope="row"><span class="pill state-{state}">{state}</span></th><td>(\d+)', html)
    assert found, state
    return int(found[1])


def _consistent(world, key: str = KEY) -> None:
    """What the console reads of the edition is what a fresh count says, and it is stored
    (counted again at this look when a change forgot it)."""
    engine = world[0]
    assert _shown(_as_console_reads(engine, key)) == _fresh(engine, key)
    edition = find_edition(engine, key)
    stored = _stored(engine, key)
    assert stored is not None and stored.finished_at == edition.finished_at


def test_finishing_an_edition_stores_its_tallies_and_the_report_reads_them(world):
    engine = world[0]
    stored = _stored(engine, KEY)
    assert stored is not None and stored.finished_at == DONE_AT
    read = _as_console_reads(engine, KEY)
    assert read.stored and _shown(read) == _fresh(engine, KEY)
    assert read.counts["sent"] == 8 and read.counts["failed"] == 3 and read.skips == {"no-stories": 2}
    assert read.span == (NOW, NOW + timedelta(minutes=14)) and sum(read.minutes.values()) == 8
    assert [(r.code, r.rows) for r in read.reasons] == [(421, 3)]
    # The page shows what is stored: a stored count changed behind its back shows.
    with session_scope(engine) as session:
        row = session.get(EditionTally, stored.edition_id)
        row.body = row.body.replace('"sent":8', '"sent":80')
    assert _page_count(world, "sent") == 80
    assert edition_report(engine, KEY).counts["sent"] == 80


def test_tallies_made_for_an_earlier_finish_are_counted_again(world):
    engine = world[0]
    with session_scope(engine) as session:
        session.execute(sa.update(Edition).where(Edition.key == KEY).values(finished_at=DONE_AT + timedelta(hours=1)))
        session.execute(sa.update(Delivery).where(Delivery.edition_id == find_edition(engine, KEY).id,
                                                  Delivery.state == "failed").values(state="sent"))
    assert _page_count(world, "sent") == 11
    _consistent(world)
    assert _stored(engine, KEY).finished_at == DONE_AT + timedelta(hours=1)


def test_a_live_edition_is_counted_at_each_look_and_never_stored(engine, settings, tmp_path):
    load_stories(engine, tmp_path)
    add_subscribers(engine, 16)
    plan_edition(engine, key=KEY, kind="weekly", window=week_window("2025-W05", settings.tz), now=NOW)
    assert find_edition(engine, KEY).state == "sending"
    assert edition_report(engine, KEY).counts["pending"] == 14
    assert make_tallies(engine, find_edition(engine, KEY).id).counts["pending"] == 14
    assert _stored(engine, KEY) is None


def test_a_second_make_finds_the_first_ones(world):
    engine = world[0]
    first = _stored(engine, KEY)
    again = make_tallies(engine, first.edition_id)
    assert again.stored and _stored(engine, KEY).made_at == first.made_at
    with session_scope(engine) as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(EditionTally)) == 2


def _report(engine, data: bytes) -> None:
    for report in read_report(data, return_path=RETURN_PATH, message_id_domain="localhost").reports:
        apply_report(engine, report, transient_limit=5, now=DONE_AT)


def test_a_late_bounce_forgets_the_editions_tallies(world):
    engine = world[0]
    row = delivery_rows(engine, KEY)[_email(0)]
    _report(engine, dsn(_email(0), to=RETURN_PATH.for_delivery(row.id)))
    assert delivery_rows(engine, KEY)[_email(0)].state == "bounced"
    assert _stored(engine, KEY) is None and _stored(engine, OTHER) is not None
    assert (_page_count(world, "sent"), _page_count(world, "bounced")) == (7, 2)
    _consistent(world)


def test_a_late_bounce_of_an_unknown_row_forgets_them_too(world):
    engine = world[0]
    row = delivery_rows(engine, KEY)[_email(9)]
    _report(engine, dsn(_email(9), to=RETURN_PATH.for_delivery(row.id)))
    assert _stored(engine, KEY) is None
    assert (_page_count(world, "unknown"), _page_count(world, "bounced")) == (1, 2)
    _consistent(world)


def test_a_report_that_changes_no_row_keeps_them(world):
    """A temporary failure heard late changes no delivery row: the stored tallies stand."""
    engine = world[0]
    row = delivery_rows(engine, KEY)[_email(0)]
    _report(engine, dsn(_email(0), status="4.2.2", to=RETURN_PATH.for_delivery(row.id)))
    assert _stored(engine, KEY) is not None
    _consistent(world)


def test_a_report_made_permanent_on_review_forgets_them(world):
    engine = world[0]
    row = delivery_rows(engine, KEY)[_email(0)]
    with session_scope(engine) as session:
        event = BounceEvent(fingerprint="review-1", kind="review", source="dsn", delivery_id=row.id,
                            edition_id=row.edition_id, subscriber_id=row.subscriber_id)
        session.add(event)
        session.flush()
        event_id = event.id
    _consistent(world)
    decide(engine, event_id, permanent=True, now=DONE_AT, who="anna")
    assert _stored(engine, KEY) is None
    assert _page_count(world, "bounced") == 2
    _consistent(world)


def test_unknown_rows_decided_sent_forget_them(world):
    engine = world[0]
    edition_id = find_edition(engine, KEY).id
    resolve_unknown(engine, edition_id, resolution=Resolution.SENT, keys=[_email(9)], who="anna", now=DONE_AT)
    assert _stored(engine, KEY) is None and find_edition(engine, KEY).state == "done"
    assert (_page_count(world, "sent"), _page_count(world, "unknown")) == (9, 1)
    _consistent(world)


def test_unknown_rows_sent_again_reopen_the_edition_and_forget_them(world):
    engine = world[0]
    edition_id = find_edition(engine, KEY).id
    resolve_unknown(engine, edition_id, resolution=Resolution.RESEND, keys=None, who="anna", now=DONE_AT)
    assert _stored(engine, KEY) is None and find_edition(engine, KEY).state == "sending"
    assert (_page_count(world, "pending"), _page_count(world, "unknown")) == (2, 0)
    assert _shown(_as_console_reads(engine, KEY)) == _fresh(engine, KEY)
    assert _stored(engine, KEY) is None  # live: counted, not stored


def test_a_retry_of_failed_rows_forgets_them_and_the_next_finish_stores_them_again(world):
    engine = world[0]
    edition_id = find_edition(engine, KEY).id
    assert retry_failed(engine, edition_id, DONE_AT) == 3
    assert _stored(engine, KEY) is None and find_edition(engine, KEY).state == "sending"
    assert (_page_count(world, "pending"), _page_count(world, "failed")) == (3, 0)
    with session_scope(engine) as session:
        session.execute(sa.update(Delivery).where(Delivery.edition_id == edition_id, Delivery.state == "pending")
                        .values(state="sent", sent_at=DONE_AT))
    later = DONE_AT + timedelta(hours=1)
    assert finish_if_done(engine, edition_id, later)
    assert _stored(engine, KEY).finished_at == later
    assert _page_count(world, "sent") == 11
    _consistent(world)


def test_a_purge_forgets_the_tallies_of_the_editions_the_reader_was_in(world):
    engine = world[0]
    assert purge_subscriber(engine, _email(0))
    assert _stored(engine, KEY) is None and _stored(engine, OTHER) is None
    assert _page_count(world, "sent") == 7 and _page_count(world, "sent", OTHER) == 7
    _consistent(world)
    _consistent(world, OTHER)


def test_a_purge_keeps_the_tallies_of_editions_the_reader_was_not_in(world):
    engine = world[0]
    later = add_subscribers(engine, 1, prefix="later")[0]
    with session_scope(engine) as session:
        edition = Edition(key="manual-later", kind="manual", label="later", window_start=NOW, window_end=DONE_AT,
                          state="done", total=1, created_at=DONE_AT, finished_at=DONE_AT)
        session.add(edition)
        session.flush()
        session.add(Delivery(edition_id=edition.id, subscriber_id=later[0], regions="RU", state="sent",
                             sent_at=DONE_AT))
    make_tallies(engine, find_edition(engine, "manual-later").id)
    assert purge_subscriber(engine, _email(3))
    assert _stored(engine, KEY) is None and _stored(engine, "manual-later") is not None
    assert purge_subscriber(engine, later[1])
    assert _stored(engine, "manual-later") is None
    assert _shown(_as_console_reads(engine, "manual-later")) == _fresh(engine, "manual-later")
    assert _as_console_reads(engine, "manual-later").counts["sent"] == 0


def test_a_discarded_edition_is_counted_when_it_finishes(engine, settings, tmp_path):
    load_stories(engine, tmp_path)
    add_subscribers(engine, 16)
    plan_edition(engine, key=KEY, kind="weekly", window=week_window("2025-W05", settings.tz), now=NOW,
                 hold="review mode")
    assert discard_edition(engine, find_edition(engine, KEY).id, now=DONE_AT, who="anna")
    stored = _stored(engine, KEY)
    assert stored is not None and stored.finished_at == DONE_AT
    read = _as_console_reads(engine, KEY)
    assert read.stored and read.skips == {"discarded": 14, "no-stories": 2}
    assert _shown(read) == _fresh(engine, KEY)


def test_a_failure_to_store_never_fails_the_finish(engine, settings, tmp_path, caplog):
    load_stories(engine, tmp_path)
    add_subscribers(engine, 16)
    plan_edition(engine, key=KEY, kind="weekly", window=week_window("2025-W05", settings.tz), now=NOW)
    _send(engine, KEY)
    with engine.begin() as conn:
        conn.execute(sa.text("ALTER TABLE edition_tallies RENAME TO edition_tallies_away"))
    try:
        with caplog.at_level(logging.ERROR, logger="worker.delivery.tallies"):
            assert finish_if_done(engine, find_edition(engine, KEY).id, DONE_AT)
    finally:
        with engine.begin() as conn:
            conn.execute(sa.text("ALTER TABLE edition_tallies_away RENAME TO edition_tallies"))
    assert find_edition(engine, KEY).state == "done"
    assert "its tallies could not be stored" in caplog.text
    # The first look counts and stores them.
    assert _stored(engine, KEY) is None and _as_console_reads(engine, KEY).counts["sent"] == 8
    assert _stored(engine, KEY) is not None


def test_the_dashboard_reads_stored_tallies_and_shows_a_large_live_edition_uncounted(world, monkeypatch):
    engine, settings, auth = world
    edition_id = find_edition(engine, KEY).id
    with session_scope(engine) as session:
        row = session.get(EditionTally, edition_id)
        row.body = row.body.replace('"sent":8', '"sent":80')
        row.summary = row.summary.replace('"sent":8', '"sent":80')  # what the dashboard reads
    lines = {line.key: line for line in dashboard(engine, now=DONE_AT).editions}
    assert lines[KEY].counted and lines[KEY].counts["sent"] == 80 and lines[OTHER].counts["sent"] == 8
    # A change forgets them: the dashboard shows the fresh count.
    row = delivery_rows(engine, KEY)[_email(0)]
    _report(engine, dsn(_email(0), to=RETURN_PATH.for_delivery(row.id)))
    lines = {line.key: line for line in dashboard(engine, now=DONE_AT).editions}
    assert (lines[KEY].counts["sent"], lines[KEY].counts["bounced"]) == (7, 2)
    assert lines[KEY].bounces.count == 2
    # Reopened by a retry, it is live: counted while small, not at all past LIVE_COUNT.
    retry_failed(engine, edition_id, DONE_AT)
    lines = {line.key: line for line in dashboard(engine, now=DONE_AT).editions}
    assert lines[KEY].counted and lines[KEY].counts["pending"] == 3
    monkeypatch.setattr(dashboard_module, "LIVE_COUNT", 10)
    lines = {line.key: line for line in dashboard(engine, now=DONE_AT).editions}
    assert not lines[KEY].counted and lines[KEY].total == 16 and lines[KEY].bounces is None
    assert lines[OTHER].counted
    html = web_client(engine, settings).get("/operator", environ_base=REMOTE, headers=auth).text
    assert (f'<td class="uncounted">16 rows, sending: counted in <a href="/operator/editions/{KEY}">the report</a>'
            in html)
    assert html.count("sending: see the report") == 2


def test_a_count_made_while_a_change_is_open_waits_for_it(world):
    """A change of rows holds the edition (forget) until it commits; a count begun meanwhile
    waits for it, so what it stores has the change in it."""
    engine = world[0]
    edition_id = find_edition(engine, KEY).id
    with session_scope(engine) as session:
        session.execute(sa.delete(EditionTally))
    done: list = []
    with session_scope(engine) as session:
        session.execute(sa.update(Delivery).where(Delivery.edition_id == edition_id, Delivery.state == "failed")
                        .values(state="bounced"))
        forget(session, [edition_id])
        counter = threading.Thread(target=lambda: done.append(make_tallies(engine, edition_id)))
        counter.start()
        counter.join(timeout=1)  # time to run ahead of the commit, were it not held back
    counter.join()
    assert done[0].counts["bounced"] == 4 and done[0].counts["failed"] == 0
    _consistent(world)


def test_a_large_live_edition_is_counted_at_most_once_per_live_max_age(world, monkeypatch):
    """A live edition past LIVE_SNAPSHOT_FROM rows: its count is stored without a finished_at
    and shown (with its time) until LIVE_MAX_AGE; then counted again; a change forgets it."""
    from worker.delivery import tallies as module

    engine = world[0]
    edition_id = find_edition(engine, KEY).id
    retry_failed(engine, edition_id, DONE_AT)  # live again, with pending rows
    monkeypatch.setattr(module, "LIVE_SNAPSHOT_FROM", 10)
    monkeypatch.setattr(dashboard_module, "LIVE_COUNT", 10)
    first = _as_console_reads(engine, KEY)
    stored = _stored(engine, KEY)
    assert stored is not None and stored.finished_at is None and first.counts["pending"] == 3
    with engine.begin() as conn:  # a row moves on; the stored count stands for now
        conn.execute(sa.text("UPDATE deliveries SET state = 'sent' WHERE edition_id = :e AND state = 'pending' "
                             "AND id = (SELECT min(id) FROM deliveries WHERE edition_id = :e AND state = 'pending')"),
                     {"e": edition_id})
    again = _as_console_reads(engine, KEY)
    assert again.counts["pending"] == 3 and again.made_at == first.made_at
    lines = {line.key: line for line in dashboard(engine, now=DONE_AT).editions}
    assert lines[KEY].counted and lines[KEY].counts["pending"] == 3  # the dashboard shows the stored count
    monkeypatch.setattr(module, "LIVE_MAX_AGE", timedelta(0))
    assert _as_console_reads(engine, KEY).counts["pending"] == 2
    with session_scope(engine) as session:
        forget(session, [edition_id])
    assert _stored(engine, KEY) is None


def test_the_worker_keeps_a_large_live_editions_count_fresh_and_leaves_the_rest(world, monkeypatch):
    """Beat's "live-counts" entry: a large live edition's count is made when it is missing or
    older than LIVE_REFRESH, so that no look at the page counts it; small, finished and fresh
    ones are left alone."""
    from worker.celery_app import COUNT_LIVE_EDITIONS, create_app
    from worker.delivery import tallies as module

    engine, settings, _ = world
    assert create_app(settings).conf.beat_schedule["live-counts"] == {"task": COUNT_LIVE_EDITIONS,
                                                                      "schedule": 60.0}
    edition_id = find_edition(engine, KEY).id
    assert module.refresh_live(engine) == []  # finished, and small
    retry_failed(engine, edition_id, DONE_AT)  # live again
    assert module.refresh_live(engine) == []  # live, but small: counted at each look
    monkeypatch.setattr(module, "LIVE_SNAPSHOT_FROM", 10)
    assert module.refresh_live(engine) == [edition_id]
    made = _stored(engine, KEY).made_at
    assert module.refresh_live(engine) == []  # fresh
    monkeypatch.setattr(module, "LIVE_REFRESH", timedelta(0))
    assert module.refresh_live(engine) == [edition_id] and _stored(engine, KEY).made_at >= made
    assert _as_console_reads(engine, KEY).made_at == _stored(engine, KEY).made_at  # the page reads it
