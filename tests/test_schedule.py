"""The weekly slot in a local zone, the beat schedule, catch-up and double triggers."""

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
import time_machine
from sqlalchemy import select

from tests.support.data import add_subscribers, load_stories
from worker.celery_app import create_app
from worker.delivery.plan import find_edition
from worker.delivery.schedule import ensure_weekly_edition, latest_slot, reconcile, week_for_slot
from worker.settings import Settings
from worker.store.db import session_scope
from worker.store.models import Delivery, Subscriber

BERLIN = ZoneInfo("Europe/Berlin")


def _settings(**over):
    return Settings(timezone="Europe/Berlin", **over)


@pytest.mark.parametrize(("now", "slot", "week"), [
    # Monday 3 Feb 2025, 07:00 Berlin (CET, UTC+1) is 06:00 UTC.
    (datetime(2025, 2, 3, 6, 0, tzinfo=UTC), datetime(2025, 2, 3, 7, 0, tzinfo=BERLIN), "2025-W05"),
    (datetime(2025, 2, 3, 5, 59, tzinfo=UTC), datetime(2025, 1, 27, 7, 0, tzinfo=BERLIN), "2025-W04"),
    # After the spring change (30 March), Monday 07:00 Berlin (CEST) is 05:00 UTC.
    (datetime(2025, 3, 31, 5, 0, tzinfo=UTC), datetime(2025, 3, 31, 7, 0, tzinfo=BERLIN), "2025-W13"),
    (datetime(2025, 3, 31, 4, 59, tzinfo=UTC), datetime(2025, 3, 24, 7, 0, tzinfo=BERLIN), "2025-W12"),
    # Across the year boundary.
    (datetime(2026, 1, 5, 6, 30, tzinfo=UTC), datetime(2026, 1, 5, 7, 0, tzinfo=BERLIN), "2026-W01"),
])
def test_the_latest_slot_and_its_week_in_local_time(now, slot, week):
    settings = _settings()
    got = latest_slot(now, settings)
    assert got == slot and got.utcoffset() == slot.utcoffset()
    assert week_for_slot(got, settings) == week


def test_another_send_day_covers_the_last_full_week():
    settings = _settings(send_day="sun", send_time="18:00")
    slot = latest_slot(datetime(2025, 2, 9, 18, 0, tzinfo=BERLIN), settings)
    assert slot == datetime(2025, 2, 9, 18, 0, tzinfo=BERLIN)
    assert week_for_slot(slot, settings) == "2025-W05"  # W06 has not ended yet


@pytest.mark.parametrize(("frozen", "due"), [
    (datetime(2025, 3, 31, 4, 59, 30, tzinfo=UTC), False),  # 06:59:30 CEST
    (datetime(2025, 3, 31, 5, 0, 30, tzinfo=UTC), True),    # 07:00:30 CEST
    (datetime(2025, 2, 3, 5, 59, 30, tzinfo=UTC), False),   # 06:59:30 CET
    (datetime(2025, 2, 3, 6, 0, 30, tzinfo=UTC), True),     # 07:00:30 CET
])
def test_the_beat_crontab_fires_at_local_time_across_dst(frozen, due):
    app = create_app(_settings())
    schedule = app.conf.beat_schedule["weekly-send"]["schedule"]
    last_run = frozen - timedelta(days=6)
    with time_machine.travel(frozen, tick=False):
        assert schedule.is_due(last_run).is_due is due


def test_two_triggers_make_one_edition(engine, tmp_path):
    load_stories(engine, tmp_path)
    add_subscribers(engine, 5)
    settings = _settings(database_url="x")
    now = datetime(2025, 2, 3, 6, 0, 5, tzinfo=UTC)
    first = ensure_weekly_edition(engine, settings, now)
    second = ensure_weekly_edition(engine, settings, now + timedelta(milliseconds=300))
    assert (first.action, second.action) == ("planned", "exists")
    assert first.edition_id == second.edition_id and first.key == "weekly-2025-W05"


def test_concurrent_triggers_make_one_edition(engine, tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    load_stories(engine, tmp_path)
    add_subscribers(engine, 40)
    settings = _settings()
    now = datetime(2025, 2, 3, 6, 0, 5, tzinfo=UTC)
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: ensure_weekly_edition(engine, settings, now), range(4)))
    assert sorted(r.action for r in results) == ["exists", "exists", "exists", "planned"]
    assert len({r.edition_id for r in results}) == 1
    assert find_edition(engine, "weekly-2025-W05").total == 40


def test_beat_back_within_the_catch_up_window_sends_and_after_it_skips(engine, tmp_path):
    load_stories(engine, tmp_path)
    add_subscribers(engine, 5)
    settings = _settings(catch_up_hours=24)
    within = ensure_weekly_edition(engine, settings, datetime(2025, 2, 4, 5, 0, tzinfo=UTC))  # 23 h late
    assert within.action == "planned"
    late = ensure_weekly_edition(engine, settings, datetime(2025, 2, 11, 7, 0, tzinfo=UTC))  # 25 h late
    assert late.action == "skipped" and late.key == "weekly-2025-W06"
    edition = find_edition(engine, "weekly-2025-W06")
    assert edition.state == "skipped"
    assert edition.reason.startswith("missed: the weekly send was due 2025-02-10T07:00:00+01:00")
    assert "past the 24 h catch-up window" in edition.reason


def test_reconcile_plans_the_due_week_and_hands_out_its_rows(engine, tmp_path):
    load_stories(engine, tmp_path)
    readers = add_subscribers(engine, 10)
    settings = _settings(batch_size=4)
    published = []
    now = datetime(2025, 2, 3, 6, 1, tzinfo=UTC)
    result = reconcile(engine, settings, lambda e, ids: published.append(ids), now)
    assert result.due.action == "planned"
    # JP is skipped at planning; the US reader waits for 07:00 in New York (12:00 UTC).
    assert sum(len(b) for b in published) == 10 - 2
    assert [len(b) for b in published] == [4, 4]
    again = reconcile(engine, settings, lambda e, ids: published.append(ids), now + timedelta(minutes=1))
    assert again.batches == 0  # handed out a minute ago and still in the broker
    later = reconcile(engine, settings, lambda e, ids: published.append(ids), now + timedelta(minutes=11))
    assert later.batches == 2  # never picked up: handed out again (the claim dedupes)
    published.clear()
    assert reconcile(engine, settings, lambda e, ids: published.append(ids),
                     datetime(2025, 2, 3, 11, 59, tzinfo=UTC)).batches == 2  # the same rows, not the US one
    published.clear()
    noon = reconcile(engine, settings, lambda e, ids: published.append(ids), datetime(2025, 2, 3, 12, 0, tzinfo=UTC))
    us = next(reader for reader, _, regions in readers if regions == "US")
    with session_scope(engine) as session:
        row = session.scalar(select(Delivery.id).where(Delivery.subscriber_id == us))
    assert noon.finished == [] and published == [[row]]


def test_no_edition_is_planned_before_its_week_has_ended_and_its_feeds_were_polled(engine, tmp_path):
    """Readers in Tokyo: their 07:00 on Monday is Sunday 22:00 UTC, before the week ends in
    NEWSLETTER_TIMEZONE (UTC). The edition waits for the week's end, polls the feed first (a
    story of the week's last hour is in it) and hands the Tokyo rows out at once."""
    import json

    from worker.ingest.sources import add_source
    from worker.store.models import Story

    settings = Settings(timezone="UTC", fetch_allow_private=True)
    load_stories(engine, tmp_path)
    readers = add_subscribers(engine, 2, sets=[("JP",)])
    with session_scope(engine) as session:
        for reader in session.scalars(select(Subscriber).where(Subscriber.id.in_([r[0] for r in readers]))):
            reader.timezone = "Asia/Tokyo"
    feed = tmp_path / "jp.json"
    feed.write_text("[]")
    add_source(engine, str(feed), region="JP")
    published = []

    def tick(*at):
        return reconcile(engine, settings, lambda e, ids: published.append(ids), datetime(*at, tzinfo=UTC))

    assert tick(2025, 2, 2, 22, 0).due.key != "weekly-2025-W05"  # Tokyo's 07:00: the week is not over
    assert tick(2025, 2, 2, 23, 59).due.key != "weekly-2025-W05" and find_edition(engine, "weekly-2025-W05") is None
    feed.write_text(json.dumps([{"id": "jp-late", "url": "https://news.example/jp/late", "title": "Late JP",
                                 "published_at": "2025-02-02T23:30:00Z"}]))
    due = tick(2025, 2, 3, 0, 0, 30)
    assert due.due.action == "planned" and due.due.key == "weekly-2025-W05"
    with session_scope(engine) as session:
        assert session.scalar(select(Story.title).where(Story.guid == "jp-late")) == "Late JP"
        rows = session.execute(select(Delivery.state, Delivery.due_at)
                               .where(Delivery.edition_id == due.due.edition_id)).all()
    # Their hour (Sunday 22:00 UTC) has passed: handed out at once, with the story of the last hour.
    assert rows == [("pending", datetime(2025, 2, 2, 22, tzinfo=UTC))] * 2
    assert sorted(i for batch in published for i in batch) == sorted(
        i for i, in _delivery_ids(engine, due.due.edition_id))


def _delivery_ids(engine, edition_id):
    with session_scope(engine) as session:
        return session.execute(select(Delivery.id).where(Delivery.edition_id == edition_id)).all()


def test_a_fresh_install_has_missed_no_week_before_it(engine, tmp_path, caplog):
    """Installed on Thursday: Monday's slot came before anything was stored. No warning and
    no `skipped` edition for it; the next Monday is planned as usual."""
    import logging

    from worker.delivery.schedule import first_stored
    from worker.store.models import Edition

    settings = _settings()
    assert first_stored(engine) is None
    thursday = datetime(2025, 2, 6, 12, tzinfo=UTC)
    caplog.set_level(logging.WARNING, logger="worker.delivery.schedule")
    assert ensure_weekly_edition(engine, settings, thursday).action == "before-start"  # nothing stored at all
    with time_machine.travel(thursday, tick=False):
        load_stories(engine, tmp_path)
        add_subscribers(engine, 3)
    assert first_stored(engine) == thursday
    due = ensure_weekly_edition(engine, settings, thursday + timedelta(minutes=1))
    assert (due.action, due.key) == ("before-start", "weekly-2025-W05")
    with session_scope(engine) as session:
        assert session.scalars(select(Edition.key)).all() == []
    assert caplog.records == []
    planned = ensure_weekly_edition(engine, settings, datetime(2025, 2, 10, 6, 0, 5, tzinfo=UTC))
    assert (planned.action, planned.key) == ("held", "weekly-2025-W06")  # planned (and held: no stories in it)


def test_a_week_missed_after_the_install_is_still_recorded_missed(engine, tmp_path):
    settings = _settings()
    with time_machine.travel(datetime(2025, 1, 30, 12, tzinfo=UTC), tick=False):
        add_subscribers(engine, 3)
    missed = ensure_weekly_edition(engine, settings, datetime(2025, 2, 6, 12, tzinfo=UTC))
    assert (missed.action, missed.key) == ("skipped", "weekly-2025-W05")
    assert find_edition(engine, "weekly-2025-W05").reason.startswith("missed: the weekly send was due")


def test_a_scheduled_week_that_overlaps_a_manual_send_is_held_naming_it(engine, tmp_path):
    from worker.delivery.plan import plan_edition
    from worker.digest import custom_window

    load_stories(engine, tmp_path)
    add_subscribers(engine, 3)
    settings = _settings()
    manual = custom_window(datetime(2025, 1, 30).date(), datetime(2025, 2, 3).date(), BERLIN)
    plan_edition(engine, key="manual-2025-01-30..2025-02-03", kind="manual", window=manual,
                 now=datetime(2025, 2, 3, 5, tzinfo=UTC))
    due = ensure_weekly_edition(engine, settings, datetime(2025, 2, 3, 6, 0, 5, tzinfo=UTC))
    assert due.action == "held"
    assert find_edition(engine, "weekly-2025-W05").reason == (
        "overlaps manual-2025-01-30..2025-02-03 (sending, 2025-01-30..2025-02-03: 2025-01-30 00:00 to 2025-02-03 "
        "00:00 CET): its readers would get the same stories twice")


def test_after_the_timezone_moves_east_the_next_week_overlaps_the_last_and_is_held(engine, tmp_path):
    load_stories(engine, tmp_path)
    add_subscribers(engine, 3)
    utc = Settings(timezone="UTC")
    assert ensure_weekly_edition(engine, utc, datetime(2025, 2, 3, 7, 0, 5, tzinfo=UTC)).action == "planned"
    moved = ensure_weekly_edition(engine, _settings(), datetime(2025, 2, 10, 6, 0, 5, tzinfo=UTC))
    assert (moved.action, moved.key) == ("held", "weekly-2025-W06")
    assert "overlaps weekly-2025-W05 (sending, 2025-W05: 2025-01-27 01:00 to 2025-02-03 01:00 CET)" in \
        find_edition(engine, "weekly-2025-W06").reason
