"""A scheduled week that looks broken is held with its reason, not sent; --approve sends it
once, --discard drops it; review mode holds every scheduled edition."""

from __future__ import annotations

import email.policy
import json
from datetime import UTC, datetime, timedelta
from email import message_from_bytes

import pytest
from sqlalchemy import select

from tests.support.data import add_subscribers
from worker.delivery.guard import check_week
from worker.delivery.plan import find_edition
from worker.delivery.schedule import reconcile
from worker.digest import week_window
from worker.ingest.sources import add_source, poll_all_sources
from worker.store.db import session_scope
from worker.store.models import Delivery, Source, Story, StoryRegion, Subscriber

# Monday 3 Feb 2025 07:00 UTC: the slot for 2025-W05 (27 Jan to 3 Feb).
SLOT = datetime(2025, 2, 3, 7, 0, 30, tzinfo=UTC)
W05 = datetime(2025, 1, 27, tzinfo=UTC)
KEY = "weekly-2025-W05"


def _add_stories(engine, region: str, monday: datetime, count: int, *, last_day: int = 6) -> None:
    with session_scope(engine) as session:
        for n in range(count):
            at = monday + timedelta(days=min(n, last_day), hours=10)
            story = Story(guid=f"{region}-{monday:%Y%m%d}-{n}", url=f"https://news.example/{region}/{monday:%m%d}/{n}",
                          title=f"{region} {n}", published_at=at)
            story.regions = [StoryRegion(region=region, position=0)]
            session.add(story)


def _usual_weeks(engine, counts: dict[str, int]) -> None:
    for k in range(1, 5):
        for region, count in counts.items():
            _add_stories(engine, region, W05 - timedelta(days=7 * k), count)


def _tick(engine, settings, at=SLOT):
    published = []
    result = reconcile(engine, settings, lambda edition, ids: published.append(ids), at)
    return result, published


def _outbox(settings) -> list:
    return sorted(settings.outbox_dir.glob("*.eml")) if settings.outbox_dir.exists() else []


def _cli_env(settings) -> dict[str, str]:
    return {"NEWSLETTER_OUTBOX_DIR": str(settings.outbox_dir), "NEWSLETTER_SECRET_KEY": "test-secret-key"}


def test_the_guard_sees_counts_usual_and_the_newest_story(engine, settings):
    add_subscribers(engine, 2, sets=[("RU",), ("UA", "RU")])
    _usual_weeks(engine, {"RU": 6, "UA": 5})
    _add_stories(engine, "RU", W05, 6)
    _add_stories(engine, "UA", W05, 1)
    check = check_week(engine, settings, week_window("2025-W05", settings.tz))
    assert check.counts == {"RU": 6, "UA": 1} and check.usual == {"RU": 6, "UA": 5}
    assert check.newest == W05 + timedelta(days=5, hours=10)
    assert check.reasons == ["UA: 1 story, far below its usual 5 (median of the last 4 weeks)"]


def test_an_empty_week_and_a_quiet_feed_are_reasons(engine, settings):
    add_subscribers(engine, 1, sets=[("RU",)])
    window = week_window("2025-W05", settings.tz)
    assert check_week(engine, settings, window).reasons == ["empty week: no stories in 2025-W05"]
    _add_stories(engine, "RU", W05, 2)  # Monday and Tuesday, then nothing for 5.6 days
    assert check_week(engine, settings, window).reasons == [
        "no new story for 5.6 days before the week ended (newest published 2025-01-28 10:00 UTC; "
        "is a feed broken? `newsletter sources list`)"]
    relaxed = settings.model_copy(update={"hold_stale_days": 6})
    assert check_week(engine, relaxed, window).reasons == []


def test_a_normal_week_is_sent_as_before(engine, settings):
    add_subscribers(engine, 2, sets=[("RU",), ("UA",)])
    _usual_weeks(engine, {"RU": 5, "UA": 5})
    _add_stories(engine, "RU", W05, 4)
    _add_stories(engine, "UA", W05, 6)
    result, published = _tick(engine, settings)
    assert result.due.action == "planned" and find_edition(engine, KEY).state == "sending"
    assert sum(len(ids) for ids in published) == 2


def test_a_week_with_a_broken_feed_is_held_then_sent_once_after_approve(engine, settings, run_cli, tmp_path):
    """Two feeds (files) polled week after week; in 2025-W05 the UA one breaks."""
    settings = settings.model_copy(update={"fetch_allow_private": True})
    add_subscribers(engine, 3, sets=[("RU",), ("UA",), ("RU", "UA")])
    feeds = {region: tmp_path / f"{region.lower()}.json" for region in ("RU", "UA")}
    for region, path in feeds.items():
        add_source(engine, str(path), region=region)
    for k in range(4, -1, -1):
        monday = W05 - timedelta(days=7 * k)
        for region, path in feeds.items():
            items = [{"id": f"{region}-{monday:%m%d}-{n}", "url": f"https://news.example/{region}/{monday:%m%d}/{n}",
                      "title": f"{region} {n}", "published_at": (monday + timedelta(days=n, hours=9)).isoformat()}
                     for n in range(5)]
            path.write_text(json.dumps(items))
        if k == 0:
            feeds["UA"].write_text("<html>502 Bad Gateway</html>")
        poll_all_sources(engine, settings, monday + timedelta(days=6, hours=12))

    result, published = _tick(engine, settings)
    assert result.due.action == "held" and published == []
    edition = find_edition(engine, KEY)
    assert edition.state == "held"
    assert edition.reason == "UA: 0 stories, far below its usual 5 (median of the last 4 weeks)"
    with session_scope(engine) as session:
        ua = session.scalar(select(Source).where(Source.region == "UA"))
        assert (ua.consecutive_failures, ua.last_error) == (2, "not an RSS or Atom feed")
    assert _tick(engine, settings, SLOT + timedelta(minutes=5))[1] == []  # later ticks hand out nothing either
    assert _outbox(settings) == []

    status = run_cli("status")
    assert f"{KEY}  held  3 rows" in status.out and f"held: {edition.reason}" in status.out
    one = run_cli("status", KEY)
    assert f"{KEY} (2025-W05): held ({edition.reason})" in one.out and "--approve" in one.out
    again = run_cli("send", "--week", "2025-W05", "--inline", env=_cli_env(settings))
    assert again.code == 0 and f"{KEY} is held: {edition.reason}" in again.out and _outbox(settings) == []

    approved = run_cli("send", "--week", "2025-W05", "--approve", "--inline", env=_cli_env(settings))
    assert approved.code == 0, approved.err
    assert f"{KEY}: approved (it was held: {edition.reason})" in approved.out
    assert len(_outbox(settings)) == 2  # RU and RU UA; the UA-only reader is skipped, no-stories
    edition = find_edition(engine, KEY)
    assert edition.state == "done" and edition.reason is None and "approved by" in edition.note

    twice = run_cli("send", "--week", "2025-W05", "--approve", "--inline", env=_cli_env(settings))
    assert twice.code == 2 and f"{KEY} is done, not held: nothing to approve" in twice.err
    assert len(_outbox(settings)) == 2
    assert _tick(engine, settings, SLOT + timedelta(minutes=10))[1] == []


def test_an_empty_scheduled_week_is_held_not_finished(engine, settings, run_cli):
    add_subscribers(engine, 2, sets=[("RU",)])
    result, published = _tick(engine, settings)
    assert result.due.action == "held" and published == []
    edition = find_edition(engine, KEY)
    assert (edition.state, edition.reason) == ("held", "empty week: no stories in 2025-W05")
    approved = run_cli("send", "--week", "2025-W05", "--approve", "--inline", env=_cli_env(settings))
    assert approved.code == 1  # nobody got the week: said, and not a success
    assert f"{KEY}: nothing was sent: nobody had stories in their regions: all 2 subscribers skipped" in approved.err
    assert find_edition(engine, KEY).state == "done" and _outbox(settings) == []


def test_approving_a_week_held_as_empty_sends_the_stories_stored_since(engine, settings, run_cli, tmp_path):
    """Held empty (the feed not set up yet); the stories come after the hold, readers join and
    leave: approval plans the rows again from what is stored now, as the preview shows it."""
    add_subscribers(engine, 3, sets=[("RU",), ("UA",), ("RU", "UA")])
    result, _ = _tick(engine, settings)
    assert result.due.action == "held" and find_edition(engine, KEY).reason == "empty week: no stories in 2025-W05"
    _add_stories(engine, "RU", W05, 4)
    _add_stories(engine, "UA", W05, 3)
    add_subscribers(engine, 1, sets=[("UA", "RU")], prefix="late")  # joined after the hold
    assert run_cli("subscribers", "remove", "reader0@example.org").code == 0  # left after the hold

    status = run_cli("status", KEY)
    assert "  3 deliveries: 0 pending, 0 sending, 0 sent, 0 failed, 0 bounced, 3 skipped, 0 unknown" in status.out
    assert ("  approving it sends to 3 subscribers: its rows below are those of the hold, and are planned again "
            "from the stories and subscribers stored at the approval") in status.out
    preview = run_cli("preview", "--week", "2025-W05", "--regions", "UA,RU", "--out", str(tmp_path / "preview"))
    assert preview.code == 0, preview.err
    previewed = (tmp_path / "preview" / "digest.txt").read_text()

    approved = run_cli("send", "--week", "2025-W05", "--approve", "--inline", env=_cli_env(settings))
    assert approved.code == 0, approved.err
    assert (f"{KEY}: approved (it was held: empty week: no stories in 2025-W05); planned again from what is "
            "stored now: 3 deliveries") in approved.out
    with session_scope(engine) as session:
        rows = dict(session.execute(select(Subscriber.email, Delivery.state)
                                    .join(Subscriber, Subscriber.id == Delivery.subscriber_id)).all())
    assert rows == {"reader1@example.org": "sent", "reader2@example.org": "sent", "late0@example.org": "sent"}
    mails = {str(m["To"].addresses[0].addr_spec): _titles(m.get_body(("plain",)).get_content())
             for m in (message_from_bytes(p.read_bytes(), policy=email.policy.default) for p in _outbox(settings))}
    ua, ru = [f"UA {n}" for n in (2, 1, 0)], [f"RU {n}" for n in (3, 2, 1, 0)]  # newest first
    assert mails == {"reader1@example.org": ua, "reader2@example.org": ru + ua, "late0@example.org": ua + ru}
    assert _titles(previewed) == mails["late0@example.org"]
    assert find_edition(engine, KEY).total == 3


def _titles(text: str) -> list[str]:
    """The story titles of a digest's text part, in order ("1. UA 2")."""
    return [line.split(". ", 1)[1] for line in text.splitlines() if line[:1].isdigit() and ". " in line]


def test_discard_drops_a_held_week(engine, settings, run_cli):
    add_subscribers(engine, 2, sets=[("RU",)])
    _add_stories(engine, "RU", W05, 7)
    result, _ = _tick(engine, settings.model_copy(update={"review": True}))
    assert result.due.action == "held"
    dropped = run_cli("send", "--week", "2025-W05", "--discard")
    assert dropped.code == 0 and f"{KEY}: discarded (it was held: review mode" in dropped.out
    edition = find_edition(engine, KEY)
    assert edition.state == "skipped" and edition.reason.startswith("discarded by ")
    with session_scope(engine) as session:
        rows = session.execute(select(Delivery.state, Delivery.skip_reason)).all()
    assert rows == [("skipped", "discarded")] * 2
    result, published = _tick(engine, settings, SLOT + timedelta(minutes=1))
    assert result.due.action == "exists" and published == []
    assert _outbox(settings) == []
    again = run_cli("send", "--week", "2025-W05", "--discard")
    assert again.code == 2 and f"{KEY} is skipped, not held: nothing to discard" in again.err


def test_review_mode_holds_every_scheduled_week_until_approved(engine, settings, run_cli):
    add_subscribers(engine, 2, sets=[("RU",), ("UA",)])
    _add_stories(engine, "RU", W05, 7)
    _add_stories(engine, "UA", W05, 7)
    review = settings.model_copy(update={"review": True})
    result, published = _tick(engine, review)
    assert result.due.action == "held" and published == []
    assert find_edition(engine, KEY).reason == (
        "review mode (NEWSLETTER_REVIEW=true): every scheduled edition waits for approval")
    env = {**_cli_env(settings), "NEWSLETTER_REVIEW": "true"}
    approved = run_cli("send", "--week", "2025-W05", "--approve", "--inline", env=env)
    assert approved.code == 0, approved.err
    assert len(_outbox(settings)) == 2 and find_edition(engine, KEY).state == "done", approved.out


@pytest.mark.parametrize("flags", [("--approve", "--discard"), ("--approve", "--dry-run")])
def test_approve_and_discard_take_no_other_action(run_cli, flags):
    assert run_cli("db", "upgrade").code == 0
    result = run_cli("send", "--week", "2025-W05", *flags, env={"NEWSLETTER_SECRET_KEY": "k" * 32})
    assert result.code == 2


def test_migration_0009_keeps_the_ledger_and_goes_back(db_url):
    import sqlalchemy as sa
    from alembic import command

    from worker.store.db import _alembic_config, create_db_engine, current_revision, upgrade_schema

    engine = create_db_engine(db_url)
    add_subscribers(engine, 1, sets=[("RU",)])
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO editions (key, kind, label, window_start, window_end, state, total, "
                             "created_at) VALUES ('k', 'weekly', 'l', :t, :t, 'held', 1, :t)"), {"t": datetime(2025, 1, 1)})
        conn.execute(sa.text("INSERT INTO deliveries (edition_id, subscriber_id, regions, state, attempts, updated_at) "
                             "SELECT e.id, s.id, 'RU', 'pending', 0, :t FROM editions e, subscribers s"),
                     {"t": datetime(2025, 1, 1)})
        conn.execute(sa.text("INSERT INTO sources (url, origin, items_added, last_rejected, consecutive_failures, "
                             "created_at) VALUES ('https://example.org/feed', 'cli', 0, 0, 0, :t)"),
                     {"t": datetime(2025, 1, 1)})
    command.downgrade(_alembic_config(engine), "0008")
    assert current_revision(engine) == "0008"
    with engine.begin() as conn:
        assert conn.execute(sa.text("SELECT state FROM editions")).scalar() == "skipped"
        assert conn.execute(sa.text("SELECT count(*) FROM deliveries")).scalar() == 1
        assert "sources" not in sa.inspect(conn).get_table_names()
    with pytest.raises(sa.exc.IntegrityError), engine.begin() as conn:
        conn.execute(sa.text("UPDATE editions SET state = 'held'"))
    assert upgrade_schema(engine, "0009") == ("0008", "0009")
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE editions SET state = 'held'"))
        assert conn.execute(sa.text("SELECT count(*) FROM deliveries")).scalar() == 1
    with pytest.raises(sa.exc.IntegrityError), engine.begin() as conn:
        conn.execute(sa.text("UPDATE editions SET state = 'lost'"))
    upgrade_schema(engine)
    engine.dispose()


def test_an_approved_week_keeps_each_readers_send_time_from_its_slot(engine, settings):
    """Approval plans the rows again with the due times of the edition's slot (Monday 07:00
    in each reader's zone): a reader whose hour has passed gets it at once, one in Los
    Angeles at 07:00 there."""
    from worker.delivery.plan import approve_edition
    from worker.delivery.schedule import release_local_send

    settings = settings.model_copy(update={"timezone": "Europe/Berlin"})
    with session_scope(engine) as session:
        session.add_all([Subscriber(email="ber@example.org", email_key="ber@example.org", regions="RU",
                                    timezone="Europe/Berlin", status="active"),
                         Subscriber(email="lax@example.org", email_key="lax@example.org", regions="RU",
                                    timezone="America/Los_Angeles", status="active")])
    result, _ = _tick(engine, settings, datetime(2025, 2, 3, 6, 0, 30, tzinfo=UTC))
    assert result.due.action == "held"
    _add_stories(engine, "RU", W05, 7)
    edition = find_edition(engine, KEY)
    assert approve_edition(engine, edition.id, now=datetime(2025, 2, 3, 9, tzinfo=UTC), who="test",
                           local=release_local_send(edition, settings))
    with session_scope(engine) as session:
        due = dict(session.execute(select(Subscriber.email, Delivery.due_at)
                                   .join(Delivery, Delivery.subscriber_id == Subscriber.id)).all())
    assert due == {"ber@example.org": datetime(2025, 2, 3, 6, tzinfo=UTC),
                   "lax@example.org": datetime(2025, 2, 3, 15, tzinfo=UTC)}
