"""Each reader's local morning: rows due at the send time in the reader's zone, handed out
as their hour comes, through the reconciler and a real SMTP server, on both databases."""

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select

from tests.support.data import load_stories
from worker.cli.report import print_status
from worker.delivery import ledger
from worker.delivery.local_time import LocalSend
from worker.delivery.pipeline import deliver_batch
from worker.delivery.plan import find_edition, plan_edition
from worker.delivery.schedule import reconcile
from worker.delivery.smtp import SmtpSender
from worker.delivery.status import edition_whereabouts
from worker.digest import week_window
from worker.store.db import session_scope
from worker.store.models import Delivery, Subscriber

KEY = "weekly-2025-W05"
# Monday 3 Feb 2025 is the send day of 2025-W05 (send time 07:00, NEWSLETTER_TIMEZONE Berlin).
READERS = {
    # email: (own zone, regions) -> 07:00 local on 3 Feb, in UTC
    "akl@example.org": ("Pacific/Auckland", "DE"),       # NZDT +13: 2 Feb 18:00
    "ru@example.org": (None, "RU UA"),                   # Moscow +3 (first region): 3 Feb 04:00
    "ber@example.org": ("Europe/Berlin", "US"),          # CET +1, own zone over the region's: 06:00
    "bv@example.org": (None, "BV DE"),                   # Bouvet Island has no zone: Berlin, 06:00
    "lax@example.org": ("America/Los_Angeles", "RU UA"),  # PST -8: 15:00
}


def _utc(*args) -> datetime:
    return datetime(*args, tzinfo=UTC)


def add_readers(engine, readers=READERS) -> None:
    with session_scope(engine) as session:
        session.add_all(Subscriber(email=email, email_key=email, regions=regions, timezone=zone, status="active")
                        for email, (zone, regions) in readers.items())


def due_by_email(engine, key=KEY) -> dict[str, datetime | None]:
    with session_scope(engine) as session:
        return dict(session.execute(
            select(Subscriber.email, Delivery.due_at).join(Delivery, Delivery.subscriber_id == Subscriber.id)
            .where(Delivery.edition_id == find_edition(engine, key).id)).all())


@pytest.fixture
def berlin(smtp_settings):
    return smtp_settings.model_copy(update={"timezone": "Europe/Berlin", "send_day": "mon", "send_time": "07:00",
                                            "secret_key": smtp_settings.secret_key or "s3cret"})


def test_each_reader_gets_the_edition_once_their_local_morning_has_come(engine, berlin, smtp_server, tmp_path):
    load_stories(engine, tmp_path)
    add_readers(engine)
    sender = SmtpSender(berlin)

    def tick(now: datetime):
        def publish(edition_id, ids):  # a worker taking the batch at once, on the same clock
            deliver_batch(engine, berlin, edition_id=edition_id, delivery_ids=ids, sender=sender, clock=lambda: now)
        return reconcile(engine, berlin, publish, now, sources=False)

    def received() -> dict[str, int]:
        return dict(smtp_server.by_recipient())

    try:
        tick(_utc(2025, 2, 2, 17, 59))
        assert find_edition(engine, KEY) is None and received() == {}  # nobody's morning yet
        # Auckland's morning has come, but the week has not ended in Berlin (midnight is 23:00 UTC).
        tick(_utc(2025, 2, 2, 22, 59))
        assert find_edition(engine, KEY) is None and received() == {}
        assert tick(_utc(2025, 2, 2, 23, 0)).due.action == "planned"
        assert received() == {"akl@example.org": 1}  # its hour passed 5 h ago: at once
        assert due_by_email(engine) == {
            "akl@example.org": _utc(2025, 2, 2, 18), "ru@example.org": _utc(2025, 2, 3, 4),
            "ber@example.org": _utc(2025, 2, 3, 6), "bv@example.org": _utc(2025, 2, 3, 6),
            "lax@example.org": _utc(2025, 2, 3, 15)}
        tick(_utc(2025, 2, 3, 3, 59))
        assert received() == {"akl@example.org": 1}
        tick(_utc(2025, 2, 3, 4, 0))
        assert received() == {"akl@example.org": 1, "ru@example.org": 1}
        tick(_utc(2025, 2, 3, 6, 0))
        assert received() == {"akl@example.org": 1, "ru@example.org": 1, "ber@example.org": 1, "bv@example.org": 1}
        waiting = tick(_utc(2025, 2, 3, 14, 59))
        assert waiting.finished == [] and find_edition(engine, KEY).state == "sending"  # LA still to come
        assert edition_whereabouts(engine, find_edition(engine, KEY).id, now=_utc(2025, 2, 3, 14, 59),
                                   redispatch_after=berlin.redispatch_after,
                                   liveness_timeout=berlin.liveness_timeout)["awaiting_hour"] == {
            "rows": 1, "next_due": "2025-02-03T15:00:00+00:00", "next_rows": 1,
            "last_due": "2025-02-03T15:00:00+00:00"}
        tick(_utc(2025, 2, 3, 15, 0))
        assert find_edition(engine, KEY).state == "done"
        assert received() == {email: 1 for email in READERS}
        tick(_utc(2025, 2, 3, 16, 0))
        assert received() == {email: 1 for email in READERS}  # once each, the edition closed
    finally:
        sender.close()


def test_an_edition_with_nobody_east_of_the_newsletter_zone_is_planned_at_its_slot(engine, berlin, tmp_path):
    load_stories(engine, tmp_path)
    add_readers(engine, {"ber@example.org": (None, "DE"), "lax@example.org": ("America/Los_Angeles", "US")})
    published = []
    assert reconcile(engine, berlin, lambda e, ids: published.append(ids), _utc(2025, 2, 3, 5, 59),
                     sources=False).due.key != KEY
    assert find_edition(engine, KEY) is None
    assert reconcile(engine, berlin, lambda e, ids: published.append(ids), _utc(2025, 2, 3, 6, 0),
                     sources=False).due.action == "planned"
    assert len(published) == 1 and len(published[0]) == 1  # Berlin now, Los Angeles at 15:00


# The one-statement claim is PostgreSQL's; the portable one runs on both.
@pytest.mark.parametrize(("db_url", "one_statement"),
                         [("sqlite", False), ("postgresql", False), ("postgresql", True)], indirect=["db_url"])
def test_the_lease_and_the_claim_refuse_a_row_before_its_hour(engine, berlin, tmp_path, one_statement):
    load_stories(engine, tmp_path)
    add_readers(engine)
    planned = plan_edition(engine, key=KEY, kind="weekly", window=week_window("2025-W05", berlin.tz),
                           now=_utc(2025, 2, 2, 12), local=LocalSend.of(date(2025, 2, 3), berlin))
    with session_scope(engine) as session:
        ids = dict(session.execute(select(Subscriber.email, Delivery.id)
                                   .join(Delivery, Delivery.subscriber_id == Subscriber.id)).all())
    early = _utc(2025, 2, 3, 5)
    assert ledger.dispatchable(engine, edition_id=planned.edition_id, now=early, redispatch_after=timedelta(0),
                               batch_size=10) == [sorted([ids["akl@example.org"], ids["ru@example.org"]])]
    # A batch published early (a hand-crafted message, a stale queue) leases only due rows...
    leased = ledger.lease_batch(engine, edition_id=planned.edition_id, ids=list(ids.values()), worker="w",
                                now=early, lease=timedelta(minutes=5))
    assert sorted(r.email for r in leased) == ["akl@example.org", "ru@example.org"]
    # ...and a lease taken at its hour claims nothing if the claim's clock says it is not due.
    late = _utc(2025, 2, 3, 15)
    assert len(ledger.lease_batch(engine, edition_id=planned.edition_id, ids=[ids["lax@example.org"]],
                                  worker="w", now=late, lease=timedelta(hours=12))) == 1
    book = ledger.open_ledger(engine, worker="w", max_attempts=3, retry_base=1, one_statement=one_statement)
    try:
        assert book.claim([ids["lax@example.org"]], now=late - timedelta(minutes=1), lease=timedelta(minutes=5)) == {}
        claimed = book.claim([ids["lax@example.org"]], now=late, lease=timedelta(minutes=5))
        assert claimed[ids["lax@example.org"]].state == "claimed"
    finally:
        book.close()


def test_the_plan_computes_due_times_in_bulk_with_the_region_and_default_fallbacks(engine, berlin, tmp_path):
    load_stories(engine, tmp_path)
    add_readers(engine, {
        "own@example.org": ("Asia/Tokyo", "RU"),     # own zone wins: 07:00 JST = 22:00 UTC the day before
        "ru@example.org": (None, "RU"),              # Moscow: 04:00
        "ua@example.org": (None, "UA RU"),           # Kyiv (not zone.tab's first, Simferopol): EET 05:00
        "au@example.org": (None, "AU"),              # Sydney (not Lord Howe): AEDT 20:00 the day before
        "bv@example.org": (None, "BV"),              # no zone for the region: NEWSLETTER_TIMEZONE, 06:00
        "gone@example.org": ("Mars/Olympus", "US"),  # a name these tz data do not know: the default
    })
    settings = berlin.model_copy(update={"region_timezones": {"AU": "Australia/Perth"}})
    plan_edition(engine, key=KEY, kind="weekly", window=week_window("2025-W05", berlin.tz), now=_utc(2025, 2, 2),
                 local=LocalSend.of(date(2025, 2, 3), settings))
    assert due_by_email(engine) == {
        "own@example.org": _utc(2025, 2, 2, 22), "ru@example.org": _utc(2025, 2, 3, 4),
        "ua@example.org": _utc(2025, 2, 3, 5), "au@example.org": _utc(2025, 2, 2, 23),  # Perth +8, configured
        "bv@example.org": _utc(2025, 2, 3, 6), "gone@example.org": _utc(2025, 2, 3, 6)}


def test_a_manual_plan_is_due_at_once(engine, berlin, tmp_path):
    load_stories(engine, tmp_path)
    add_readers(engine)
    plan_edition(engine, key=KEY, kind="weekly", window=week_window("2025-W05", berlin.tz), now=_utc(2025, 2, 2))
    assert set(due_by_email(engine).values()) == {None}


@pytest.mark.parametrize(("zone", "day", "at", "due", "local"), [
    # Berlin: the spring change is Sunday 30 March 2025 at 02:00 (CET +1 -> CEST +2).
    ("Europe/Berlin", date(2025, 3, 24), time(7), _utc(2025, 3, 24, 6), time(7)),
    ("Europe/Berlin", date(2025, 3, 30), time(7), _utc(2025, 3, 30, 5), time(7)),   # on the change day
    ("Europe/Berlin", date(2025, 3, 31), time(7), _utc(2025, 3, 31, 5), time(7)),   # the day after
    # 02:30 does not exist that night: read with the offset before the change, 03:30 CEST.
    ("Europe/Berlin", date(2025, 3, 30), time(2, 30), _utc(2025, 3, 30, 1, 30), time(3, 30)),
    # Autumn (26 October, CEST -> CET at 03:00): 02:30 happens twice; the first one counts.
    ("Europe/Berlin", date(2025, 10, 26), time(2, 30), _utc(2025, 10, 26, 0, 30), time(2, 30)),
    ("Europe/Berlin", date(2025, 10, 26), time(7), _utc(2025, 10, 26, 6), time(7)),
    ("Europe/Berlin", date(2025, 10, 27), time(7), _utc(2025, 10, 27, 6), time(7)),
    # Los Angeles: 9 March 2025 (PST -8 -> PDT -7) and 2 November 2025 (back).
    ("America/Los_Angeles", date(2025, 3, 3), time(7), _utc(2025, 3, 3, 15), time(7)),
    ("America/Los_Angeles", date(2025, 3, 9), time(7), _utc(2025, 3, 9, 14), time(7)),
    ("America/Los_Angeles", date(2025, 3, 10), time(7), _utc(2025, 3, 10, 14), time(7)),
    ("America/Los_Angeles", date(2025, 3, 9), time(2, 30), _utc(2025, 3, 9, 10, 30), time(3, 30)),
    ("America/Los_Angeles", date(2025, 11, 2), time(1, 30), _utc(2025, 11, 2, 8, 30), time(1, 30)),
    ("America/Los_Angeles", date(2025, 11, 2), time(7), _utc(2025, 11, 2, 15), time(7)),
    ("America/Los_Angeles", date(2025, 11, 3), time(7), _utc(2025, 11, 3, 15), time(7)),
])
def test_the_send_time_is_local_whatever_the_offset_that_day(zone, day, at, due, local):
    got = LocalSend(day, at).due_in(zone)
    assert got == due
    assert got.astimezone(ZoneInfo(zone)).time() == local and got.astimezone(ZoneInfo(zone)).date() == day


def test_a_dst_week_through_the_reconciler(engine, berlin, tmp_path):
    """Send day Sunday 30 March 2025 at 02:30, the hour Berlin skips: the Berlin reader's
    row is due at 03:30 CEST (01:30 UTC), the Los Angeles reader's at 02:30 PDT."""
    load_stories(engine, tmp_path, week_days=("2025-03-18", "2025-03-20"))
    add_readers(engine, {"ber@example.org": ("Europe/Berlin", "DE"), "lax@example.org": ("America/Los_Angeles", "DE")})
    settings = berlin.model_copy(update={"send_day": "sun", "send_time": "02:30"})
    published = []
    tick = reconcile(engine, settings, lambda e, ids: published.extend(ids), _utc(2025, 3, 30, 1, 30), sources=False)
    assert tick.due.action == "planned" and tick.due.key == "weekly-2025-W12" and len(published) == 1
    assert due_by_email(engine, "weekly-2025-W12") == {"ber@example.org": _utc(2025, 3, 30, 1, 30),
                                                      "lax@example.org": _utc(2025, 3, 30, 9, 30)}


def test_status_says_how_many_rows_wait_for_their_hour_and_when(engine, berlin, tmp_path, capsys):
    load_stories(engine, tmp_path)
    add_readers(engine)
    planned = plan_edition(engine, key=KEY, kind="weekly", window=week_window("2025-W05", berlin.tz),
                           now=_utc(2025, 2, 2), local=LocalSend.of(date(2025, 2, 3), berlin))
    now = _utc(2025, 2, 3, 5)
    where = edition_whereabouts(engine, planned.edition_id, now=now, redispatch_after=berlin.redispatch_after,
                                liveness_timeout=berlin.liveness_timeout)
    assert where["awaiting_hour"] == {"rows": 3, "next_due": "2025-02-03T06:00:00+00:00", "next_rows": 2,
                                      "last_due": "2025-02-03T15:00:00+00:00"}
    from worker.editions import full_status

    data = full_status(engine, berlin, find_edition(engine, KEY), now=now)
    print_status(data, tz=ZoneInfo("Europe/Berlin"))
    out = capsys.readouterr().out
    assert ("  3 rows wait for the send time in their reader's zone: the next 2 at 2025-02-03 07:00:00 CET, "
            "in 60 min; the last at 2025-02-03 16:00:00 CET, in 10.0 h\n") in out


def test_wait_stops_following_when_only_rows_waiting_for_their_hour_are_left(engine, berlin, tmp_path, run_cli,
                                                                             worker_env):
    """`--wait` follows what can go out now; rows hours away are the reconciler's, and the
    final report says when they fall due (it would otherwise hold the terminal for hours)."""
    import sqlalchemy as sa

    load_stories(engine, tmp_path)
    add_readers(engine)
    now = datetime.now(UTC)
    planned = plan_edition(engine, key=KEY, kind="weekly", window=week_window("2025-W05", berlin.tz), now=now)
    later = (now + timedelta(hours=5)).replace(tzinfo=None)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE deliveries SET state = 'sent', sent_at = :t WHERE edition_id = :e "
                             "AND state = 'pending' AND id % 2 = 0"), {"t": now.replace(tzinfo=None), "e": planned.edition_id})
        waiting = conn.execute(sa.text("UPDATE deliveries SET due_at = :later WHERE edition_id = :e "
                                       "AND state = 'pending'"), {"later": later, "e": planned.edition_id}).rowcount
    assert waiting > 0
    result = run_cli("resume", KEY, "--wait", env=worker_env)
    assert result.code == 0, result.err
    assert f"{waiting} rows wait for the send time in their reader's zone" in result.out
    assert find_edition(engine, KEY).state == "sending"
