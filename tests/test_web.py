"""The web app: one-click unsubscribe, confirm page, view-online of sent editions, preview pages."""

import re
from datetime import UTC, datetime
from email import policy
from email.parser import BytesParser

import sqlalchemy as sa
from pydantic import SecretStr

from worker.delivery import pipeline
from worker.delivery.pipeline import run_inline
from worker.delivery.plan import plan_edition
from worker.delivery.senders import make_sender
from worker.delivery.variants import VariantStore
from worker.digest import week_window
from worker.store.db import session_scope
from worker.store.models import Story, Subscriber
from worker.tokens import unsubscribe_token
from worker.web import create_app


def _client(engine, settings):
    app = create_app(settings, engine)
    app.testing = True
    return app.test_client()


def _anna(engine):
    with session_scope(engine) as session:
        return session.scalar(sa.select(Subscriber).where(Subscriber.email_key == "anna.petrova@example.org"))


def _status(engine, subscriber_id):
    with session_scope(engine) as session:
        return session.get(Subscriber, subscriber_id).status


def test_one_click_post_unsubscribes_once_and_again(sample_engine, settings):
    client = _client(sample_engine, settings)
    anna = _anna(sample_engine)
    token = unsubscribe_token("test-secret-key", anna.id, anna.link_key)
    first = client.post(f"/unsubscribe/{token}", data="List-Unsubscribe=One-Click",
                        content_type="application/x-www-form-urlencoded")
    assert first.status_code == 200 and "You are unsubscribed" in first.text
    assert _status(sample_engine, anna.id) == "unsubscribed"
    again = client.post(f"/unsubscribe/{token}", data={"List-Unsubscribe": "One-Click"})
    assert again.status_code == 200 and _status(sample_engine, anna.id) == "unsubscribed"
    assert first.headers.get("Location") is None


def test_get_shows_a_confirm_page_and_changes_nothing(sample_engine, settings):
    client = _client(sample_engine, settings)
    anna = _anna(sample_engine)
    page = client.get(f"/unsubscribe/{unsubscribe_token('test-secret-key', anna.id, anna.link_key)}")
    assert page.status_code == 200
    assert '<form method="post"' in page.text and anna.email in page.text
    assert _status(sample_engine, anna.id) == "active"


def test_tampered_and_foreign_tokens_get_400_and_change_nothing(sample_engine, settings):
    client = _client(sample_engine, settings)
    anna = _anna(sample_engine)
    good = unsubscribe_token("test-secret-key", anna.id, anna.link_key)
    for bad in [good[:-2] + "xx", unsubscribe_token("another-key", anna.id, anna.link_key), "nonsense"]:
        assert client.post(f"/unsubscribe/{bad}", data="List-Unsubscribe=One-Click").status_code == 400
        assert client.get(f"/unsubscribe/{bad}").status_code == 400
    # Ours, but for no row, or for Anna's id with another row's key: gone (410), not forged.
    for dead in [unsubscribe_token("test-secret-key", 999_999, anna.link_key),
                 unsubscribe_token("test-secret-key", anna.id, "another-rows-key")]:
        assert client.post(f"/unsubscribe/{dead}", data="List-Unsubscribe=One-Click").status_code == 410
        assert client.get(f"/unsubscribe/{dead}").status_code == 410
    with session_scope(sample_engine) as session:
        assert set(session.scalars(sa.select(Subscriber.status))) == {"active"}


def lengthen_stories(engine) -> str:
    """Every story long enough for the mailed copy to be cut under Gmail's clip; the text."""
    long = "Negotiators met again on Tuesday and agreed on the outline of a deal. " * 300
    with session_scope(engine) as session:
        for story in session.scalars(sa.select(Story)):
            story.summary_html, story.summary_text = f"<p>{long}</p>", long
    return long


def _send_week(engine, settings, week="2025-W05"):
    """A real sent edition: planned and delivered in-process through the file backend."""
    # The pipeline keeps renders per process by edition id, and every test database
    # starts again at id 1: without this a later test would not store its variants.
    pipeline._RENDERERS.clear()
    planned = plan_edition(engine, key=f"weekly-{week}", kind="weekly", window=week_window(week, settings.tz),
                           now=datetime(2025, 2, 3, 7, 0, tzinfo=UTC))
    run_inline(engine, settings, planned.edition_id, make_sender(settings))
    return planned


def _view_online_link(settings, email):
    """The "view online" path of the message this reader got, read from the outbox."""
    for path in settings.outbox_dir.glob("*.eml"):
        message = BytesParser(policy=policy.default).parsebytes(path.read_bytes())
        if message["To"].addresses[0].addr_spec == email:
            html = message.get_body(("html",)).get_content()
            return re.search(re.escape(settings.public_url) + r"(/archive/[^\"]+)", html).group(1)
    raise AssertionError(f"no message to {email}")


def test_view_online_serves_the_stored_variant_without_personal_data(sample_engine, settings):
    _send_week(sample_engine, settings)
    client = _client(sample_engine, settings)
    link = _view_online_link(settings, "anna.petrova@example.org")
    assert link == "/archive/weekly-2025-W05/RU-UA"
    page = client.get(link)
    assert page.status_code == 200
    assert "Russia" in page.text and "Hello," in page.text
    assert "%%NL" not in page.text and "/unsubscribe/" not in page.text and "Anna" not in page.text
    assert "sandbox" in page.headers["Content-Security-Policy"]
    assert page.headers["Cache-Control"].startswith("public")


def test_view_online_shows_the_whole_edition_when_the_mail_was_shortened_under_the_clip(sample_engine, settings):
    # The mailed copy is cut to pass under Gmail's clip; its "N more stories online" and
    # "view online" links lead here, which keeps every word.
    long = lengthen_stories(sample_engine)
    _send_week(sample_engine, settings)
    link = _view_online_link(settings, "anna.petrova@example.org")
    for path in settings.outbox_dir.glob("*.eml"):
        message = BytesParser(policy=policy.default).parsebytes(path.read_bytes())
        if message["To"].addresses[0].addr_spec == "anna.petrova@example.org":
            mailed = message.get_body(("html",)).get_content()
    assert long.strip() not in mailed and "…" in mailed
    page = _client(sample_engine, settings).get(link)
    assert page.status_code == 200
    assert long.strip() in page.text and "Anna" not in page.text and "%%NL" not in page.text


def test_view_online_never_renders_an_unsent_week(sample_engine, settings):
    client = _client(sample_engine, settings)
    page = client.get("/archive/weekly-2025-W05/RU-UA")  # stories exist, nothing was sent
    assert page.status_code == 404 and "never sent" in page.text


def test_view_online_shows_what_was_sent_not_later_edits(sample_engine, settings):
    _send_week(sample_engine, settings)
    client = _client(sample_engine, settings)
    before = client.get("/archive/weekly-2025-W05/RU-UA").text
    with session_scope(sample_engine) as session:
        for story in session.scalars(sa.select(Story)):
            story.title = "Edited after sending"
    after = client.get("/archive/weekly-2025-W05/RU-UA")
    assert after.status_code == 200 and after.text == before
    assert "Edited after sending" not in after.text


def test_view_online_answers_404_for_what_was_never_sent(sample_engine, settings):
    planned = _send_week(sample_engine, settings)
    VariantStore(sample_engine, edition_id=planned.edition_id, edition_key="weekly-2025-W05").claim(("IT",), "en")
    client = _client(sample_engine, settings)
    for path in [
        "/archive/weekly-2025-W06/RU-UA",   # an edition that does not exist
        "/archive/weekly-9999-W52/RU",      # nor at the calendar's edge
        "/archive/nonsense/RU",
        "/archive/weekly-2025-W05/JP",      # in the edition, skipped: no stories, never rendered
        "/archive/weekly-2025-W05/UA-GB",   # regions nobody follows together
        "/archive/weekly-2025-W05/IT",      # claimed but never filled in
        "/archive/weekly-2025-W05/XX",      # not a region
        "/archive/weekly-2025-W05/RU--",    # RU was sent, but no email links to this spelling
        "/archive/weekly-2025-W05/ru-ua",
        "/archive/weekly-2025-W05/-",
        "/archive/weekly-2025-W05/RU-UA/en",  # the list's own language has the short spelling only
        "/archive/weekly-2025-W05/RU-UA/ru",  # nobody got it in Russian
        "/archive/weekly-2025-W05/RU-UA/de",  # no such catalog
        "/archive/weekly-2025-W05/RU-UA/../..",
    ]:
        page = client.get(path)
        assert page.status_code == 404, path
        assert "Nothing here" in page.text and 'href="/"' not in page.text


def test_view_online_answers_404_for_a_variant_stored_empty(sample_engine, settings):
    planned = _send_week(sample_engine, settings)
    store = VariantStore(sample_engine, edition_id=planned.edition_id, edition_key="weekly-2025-W05")
    assert store.claim(("IT",), "en")
    store.save(("IT",), "en", None)
    assert _client(sample_engine, settings).get("/archive/weekly-2025-W05/IT").status_code == 404


def test_healthz_is_public_cheap_and_says_ok(sample_engine, settings):
    client = _client(sample_engine, settings.model_copy(update={"operator_token": SecretStr("t0ken")}))
    page = client.get("/healthz", environ_base={"REMOTE_ADDR": "203.0.113.5"})
    assert page.status_code == 200 and page.text == "ok\n"


def test_readers_pages_link_to_the_site_never_to_the_operator_pages(sample_engine, settings):
    anna = _anna(sample_engine)
    token = unsubscribe_token("test-secret-key", anna.id, anna.link_key)
    bare = _client(sample_engine, settings)
    assert 'href="/"' not in bare.get(f"/unsubscribe/{token}").text
    with_site = _client(sample_engine, settings.model_copy(update={"site_url": "https://news.example"}))
    page = with_site.get(f"/unsubscribe/{token}")
    assert '<a href="https://news.example">' in page.text and 'href="/"' not in page.text
    assert '<a href="https://news.example">' in with_site.get("/archive/none/RU").text


def test_preview_index_and_pages(sample_engine, settings):
    client = _client(sample_engine, settings)
    index = client.get("/?week=2025-W05")
    assert index.status_code == 200 and "/preview/2025-W05/RU-UA" in index.text
    assert "skipped: no stories" in index.text  # the JP-only subscriber
    page = client.get("/preview/2025-W05/RU-UA")
    assert page.status_code == 200
    assert '<iframe sandbox src="/preview/2025-W05/RU-UA/html"' in page.text
    assert "List-Unsubscribe-Post: List-Unsubscribe=One-Click" in page.text
    assert "Russia\n======\n" in page.text
    html = client.get("/preview/2025-W05/RU-UA/html")
    assert html.status_code == 200 and html.text.startswith("<!DOCTYPE html>")
    assert html.headers["Content-Security-Policy"].startswith("sandbox")


def test_preview_of_a_bogus_week_or_region_set_is_404_not_500(sample_engine, settings):
    client = _client(sample_engine, settings)
    for path in ["/preview/bogus/RU-UA", "/preview/2025-W99/RU-UA", "/preview/9999-W52/RU-UA",
                 "/preview/9999-W52/RU-UA/html", "/preview/2025-W05/XX", "/preview/2025-W05/JP",
                 "/?week=9999-W52", "/?week=bogus"]:
        assert client.get(path).status_code == 404, path
