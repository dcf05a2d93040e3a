"""The web app: one-click unsubscribe, confirm page, archive and preview pages."""

import sqlalchemy as sa

from worker.store.db import session_scope
from worker.store.models import Subscriber
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
    token = unsubscribe_token("test-secret-key", anna.id)
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
    page = client.get(f"/unsubscribe/{unsubscribe_token('test-secret-key', anna.id)}")
    assert page.status_code == 200
    assert '<form method="post"' in page.text and anna.email in page.text
    assert _status(sample_engine, anna.id) == "active"


def test_tampered_and_foreign_tokens_get_400_and_change_nothing(sample_engine, settings):
    client = _client(sample_engine, settings)
    anna = _anna(sample_engine)
    good = unsubscribe_token("test-secret-key", anna.id)
    for bad in [good[:-2] + "xx", unsubscribe_token("another-key", anna.id), "nonsense",
                unsubscribe_token("test-secret-key", 999_999)]:
        assert client.post(f"/unsubscribe/{bad}", data="List-Unsubscribe=One-Click").status_code == 400
        assert client.get(f"/unsubscribe/{bad}").status_code == 400
    with session_scope(sample_engine) as session:
        assert set(session.scalars(sa.select(Subscriber.status))) == {"active"}


def test_archive_is_the_digest_without_personal_data(sample_engine, settings):
    client = _client(sample_engine, settings)
    page = client.get("/archive/weekly-2025-W05/RU-UA")
    assert page.status_code == 200
    assert "Russian Federation" in page.text and "Hello," in page.text
    assert "%%NL_" not in page.text and "/unsubscribe/" not in page.text
    assert "sandbox" in page.headers["Content-Security-Policy"]
    assert client.get("/archive/weekly-2025-W05/JP").status_code == 404
    assert client.get("/archive/weekly-2025-W99/RU").status_code == 404
    assert client.get("/archive/weekly-2025-W05/XX").status_code == 404


def test_preview_index_and_pages(sample_engine, settings):
    client = _client(sample_engine, settings)
    index = client.get("/?week=2025-W05")
    assert index.status_code == 200 and "/preview/2025-W05/RU-UA" in index.text
    assert "skipped: no stories" in index.text  # the JP-only subscriber
    page = client.get("/preview/2025-W05/RU-UA")
    assert page.status_code == 200
    assert '<iframe sandbox src="/preview/2025-W05/RU-UA/html"' in page.text
    assert "List-Unsubscribe-Post: List-Unsubscribe=One-Click" in page.text
    assert "Russian Federation\n==================" in page.text
    html = client.get("/preview/2025-W05/RU-UA/html")
    assert html.status_code == 200 and html.text.startswith("<!DOCTYPE html>")
    assert html.headers["Content-Security-Policy"].startswith("sandbox")
