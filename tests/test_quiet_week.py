"""NEWSLETTER_QUIET_WEEK=wider: a reader whose regions had no story this week still gets a
short digest, with the week's most opened stories across the site (the newest when
nothing was opened), rendered once per edition like any region set."""

import json
import re
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa

from tests.support.data import ledger, outbox_message, send_week
from worker import clicks
from worker.delivery import pipeline
from worker.delivery.plan import plan_edition
from worker.digest import week_window
from worker.digest.queries import fetch_window_stories
from worker.store.db import session_scope
from worker.store.models import Subscriber, Variant
from worker.tokens import ClickTarget
from worker.web import create_app

WEEK = "2025-W05"
QUIET = [("nz.one@example.org", "NZ"), ("nz.two@example.org", "NZ"), ("jp@example.org", "JP KR")]


def _quiet_readers(engine):
    with session_scope(engine) as session:
        session.add_all(Subscriber(email=email, email_key=email, name=None, regions=regions, status="active")
                        for email, regions in QUIET)


def _mail(settings, email):
    return outbox_message(settings, email, required=False)


def _week(engine, settings):
    with session_scope(engine) as session:
        return fetch_window_stories(session, week_window(WEEK, settings.tz))


@pytest.fixture
def wider(settings):
    return settings.model_copy(update={"quiet_week": "wider", "stories_per_region": 3})


def test_by_default_a_quiet_reader_is_skipped(sample_engine, settings):
    _quiet_readers(sample_engine)
    send_week(sample_engine, settings)
    rows = ledger(sample_engine, f"weekly-{WEEK}")
    assert rows["nz.one@example.org"] == ("skipped", "no-stories")
    assert _mail(settings, "nz.one@example.org") is None


def test_a_quiet_reader_gets_the_newest_stories_across_the_site_when_nothing_was_opened(sample_engine, wider):
    _quiet_readers(sample_engine)
    send_week(sample_engine, wider)
    rows = ledger(sample_engine, f"weekly-{WEEK}")
    assert {email: rows[email] for email, _ in QUIET} == {email: ("sent", None) for email, _ in QUIET}
    message = _mail(wider, "nz.one@example.org")
    html, text = message.get_body(("html",)).get_content(), message.get_body(("plain",)).get_content()
    assert "Nothing new from New Zealand this week. Here are the stories published most recently across" in text
    assert "Nothing new from New Zealand this week." in html and "This week across the site" in html
    newest = sorted(_week(sample_engine, wider), key=lambda s: (-s.published_at.timestamp(), s.id))[:3]
    shown = re.findall(r'<h3 class="story-title"[^>]*><a href="([^"]+)"', html)
    assert shown == [story.url for story in newest]
    assert message["Subject"] == newest[0].title
    # The same footer and links as any digest: manage, unsubscribe, and leaving the region.
    assert "Stop New Zealand news" in html and "Stop New Zealand news:" in text
    assert "/manage/" in html and "/unsubscribe/" in html and message["List-Unsubscribe"]
    # JP KR: both regions named, and a leave link for each.
    jp = _mail(wider, "jp@example.org").get_body(("plain",)).get_content()
    assert "Nothing new from Japan and South Korea this week." in jp
    assert "Stop Japan news:" in jp and "Stop South Korea news:" in jp


def test_a_quiet_digest_leads_with_the_weeks_most_opened_stories(sample_engine, wider, run_cli, monkeypatch):
    _quiet_readers(sample_engine)
    week = _week(sample_engine, wider)
    oldest, older = sorted(week, key=lambda s: (s.published_at, s.id))[:2]
    # Readers opened two of the week's oldest stories in an earlier edition (a manual one).
    earlier = send_week(sample_engine, wider.model_copy(update={"quiet_week": "skip"}), key="manual-earlier")
    clicks.record(sample_engine, {ClickTarget(earlier, oldest.id, oldest.regions[0]): [3, 0],
                                  ClickTarget(earlier, older.id, older.regions[0]): [1, 5]})
    for path in wider.outbox_dir.glob("*.eml"):
        path.unlink()
    send_week(sample_engine, wider)
    html = _mail(wider, "nz.two@example.org").get_body(("html",)).get_content()
    shown = re.findall(r'<h3 class="story-title"[^>]*><a href="([^"]+)"', html)
    assert shown[:2] == [oldest.url, older.url] and len(shown) == 3
    assert "Most read this week" in html and "the stories readers opened most across" in html
    # It counts as sent like any copy: `status` says so, and nobody is skipped for no-stories.
    monkeypatch.setenv("NEWSLETTER_SECRET_KEY", "test-secret-key")
    data = json.loads(run_cli("status", f"weekly-{WEEK}", "--json").out)
    assert data["counts"]["sent"] == data["total"] and "no-stories" not in data["skip_reasons"]


def test_a_quiet_region_set_is_rendered_once_and_served_online_without_the_reader(sample_engine, wider):
    _quiet_readers(sample_engine)
    edition_id = send_week(sample_engine, wider)
    with session_scope(sample_engine) as session:
        quiet = session.scalars(sa.select(Variant).where(Variant.edition_id == edition_id,
                                                         Variant.regions.in_(["NZ", "JP KR"]))).all()
    assert sorted(v.regions for v in quiet) == ["JP KR", "NZ"] and all(v.story_count == 3 for v in quiet)
    one, two = (_mail(wider, email).get_body(("html",)).get_content() for email in ("nz.one@example.org",
                                                                                   "nz.two@example.org"))
    link = re.search(r'https?://[^"]+(/archive/[^"]+)"', one).group(1)
    assert link == f"/archive/weekly-{WEEK}/NZ"
    page = create_app(wider, sample_engine).test_client().get(link)
    assert page.status_code == 200 and "Nothing new from New Zealand" in page.text
    assert "nz.one" not in page.text and "/unsubscribe/" not in page.text and "/manage/" not in page.text
    # Two readers, one render: their copies differ only in their own links and address.
    assert re.sub(r"https?://[^\"]+/(manage|unsubscribe)/[^\"]+|nz\.(one|two)", "", one) == \
        re.sub(r"https?://[^\"]+/(manage|unsubscribe)/[^\"]+|nz\.(one|two)", "", two)


def test_a_week_without_any_story_sends_nothing_even_when_wider(sample_engine, wider):
    _quiet_readers(sample_engine)
    pipeline._RENDERERS.clear()
    planned = plan_edition(sample_engine, key="weekly-2030-W01", kind="weekly",
                           window=week_window("2030-W01", wider.tz), now=datetime(2030, 1, 7, tzinfo=UTC), wider=True)
    rows = ledger(sample_engine, "weekly-2030-W01")
    assert rows and set(rows.values()) == {("skipped", "no-stories")}
    assert planned.created


def test_preview_and_dry_run_show_the_quiet_digest(sample_engine, wider, run_cli, tmp_path):
    _quiet_readers(sample_engine)
    env = {"NEWSLETTER_QUIET_WEEK": "wider", "NEWSLETTER_SECRET_KEY": "test-secret-key",
           "NEWSLETTER_TIMEZONE": "UTC", "NEWSLETTER_PREVIEW_DIR": str(tmp_path / "p")}
    shown = run_cli("preview", "--week", WEEK, "--regions", "NZ", env=env)
    assert shown.code == 0, shown.err
    assert "Nothing new from New Zealand" in (tmp_path / "p" / "digest.txt").read_text()
    skipped = run_cli("preview", "--week", WEEK, "--regions", "NZ", env={**env, "NEWSLETTER_QUIET_WEEK": "skip"})
    assert skipped.code != 0 and "no-stories" in skipped.err
    dry = run_cli("send", "--week", WEEK, "--dry-run", env=env)
    assert dry.code == 0, dry.err
    assert "skip 0 (no-stories)" in dry.out


def test_the_archive_lists_no_quiet_copy_and_a_regions_feed_only_its_weeks_with_news(sample_engine, wider):
    import feedparser

    with session_scope(sample_engine) as session:
        session.add_all(Subscriber(email=f"nz{n}@example.org", email_key=f"nz{n}@example.org", regions="NZ",
                                   status="active") for n in range(6))
    send_week(sample_engine, wider)
    client = create_app(wider, sample_engine).test_client()
    listing = client.get("/archive").text
    assert "/archive/weekly-2025-W05/RU" in listing and "/archive/weekly-2025-W05/NZ" not in listing
    feed = feedparser.parse(client.get("/archive/NZ.atom").data)
    assert not feed.bozo and feed.entries == []
    assert len(feedparser.parse(client.get("/archive/RU.atom").data).entries) == 1
    # Still its readers' "View online".
    assert client.get("/archive/weekly-2025-W05/NZ").status_code == 200
