"""The whole way in, with the real app and a real SMTP server: sign up, the confirmation mail
arrives, confirm, and the next edition brings the digest with working manage and leave
links. Forged, expired and reused confirmation links are refused with a page that says so."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime

import pytest
import time_machine

from tests.test_readers_signup import PUBLIC, Readers, confirm, confirm_path, csrf_of, for_readers
from worker.delivery import pipeline
from worker.delivery.pipeline import run_inline
from worker.delivery.plan import plan_edition
from worker.delivery.senders import make_sender
from worker.digest import week_window
from worker.tokens import confirm_token


@pytest.fixture
def readers(engine, settings):
    return Readers(engine, for_readers(settings))


@pytest.fixture
def smtp_readers(sample_engine, smtp_settings):
    return Readers(sample_engine, for_readers(smtp_settings))


def _arrived(smtp_server, rcpt, count=1, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [r for r in smtp_server.received if r.rcpt == rcpt]
        if len(found) >= count:
            return found
        time.sleep(0.02)
    raise AssertionError(f"no mail for {rcpt} within {timeout} s")


def _send(readers, week):
    pipeline._RENDERERS.clear()  # per-process renders are keyed by edition id, which restarts per test database
    planned = plan_edition(readers.engine, key=f"weekly-{week}", kind="weekly",
                           window=week_window(week, readers.settings.tz), now=datetime.now(UTC))
    run_inline(readers.engine, readers.settings, planned.edition_id, make_sender(readers.settings))
    return planned


def test_sign_up_confirm_by_mail_and_the_next_edition_includes_them(smtp_readers, smtp_server):
    readers = smtp_readers
    page = readers.client.post("/subscribe", data={"email": "Reader@Example.net", "name": "Rea Der", "regions": "UA,RU"},
                               headers={"Origin": "https://site.example"})
    assert page.status_code == 200
    [arrived] = _arrived(smtp_server, "Reader@example.net")
    message = arrived.message
    assert arrived.mail_from == "digest@news.example"
    assert message["From"] == "Melange News <digest@news.example>" and message["To"] == "Reader@example.net"
    assert message.get_content_type() == "multipart/alternative"
    html = message.get_body(("html",)).get_content()
    path = confirm_path(message)
    assert f'href="{PUBLIC}{path}"' in html and "Confirm my subscription" in html
    assert max(map(len, arrived.data.split(b"\r\n"))) <= 998

    done = confirm(readers, message)
    assert done.status_code == 200 and "Ukraine, Russia" in done.text

    _send(readers, "2025-W05")
    [digest] = _arrived(smtp_server, "Reader@example.net", count=2)[1:]
    text = digest.message.get_body(("plain",)).get_content().replace("\r\n", "\n")
    assert text.startswith("Hello Rea Der,")
    assert text.index("Ukraine\n=====") < text.index("Russia\n=====")  # their order
    manage = re.search(re.escape(PUBLIC) + r"(/manage/[A-Za-z0-9._-]+)\n", text)[1]
    assert f"Stop Ukraine news:\n   {PUBLIC}{manage}/leave/UA" in text
    assert f"Manage your regions: {PUBLIC}{manage}" in text
    page = readers.client.get(manage)
    assert page.status_code == 200 and "Reader@example.net" in page.text
    assert page.text.index("Ukraine") < page.text.index("Russia")


def test_a_forged_confirmation_link_is_refused_with_a_clear_page(readers):
    readers.subscribe()
    [mail] = readers.mails()
    path = confirm_path(mail)
    row = readers.row()
    token = path.rsplit("/", 1)[1]
    for bad in [token[:-3] + "abc", token + "x", "nonsense", "x" * 5000,
                confirm_token("another-secret", row.id, row.confirm_nonce),
                confirm_token("test-secret-key", row.id, "guessed-nonce"),
                confirm_token("test-secret-key", row.id + 1, row.confirm_nonce)]:
        for page in (readers.client.get(f"/confirm/{bad}"), readers.client.post(f"/confirm/{bad}", data={})):
            assert page.status_code in (400, 404, 410), bad
            if page.status_code != 404:  # an over-long path is no route at all
                assert "This link" in page.text
    assert readers.row().status == "pending"


def test_an_expired_confirmation_link_is_refused_and_says_to_sign_up_again(readers):
    readers.subscribe()
    [mail] = readers.mails()
    with time_machine.travel(datetime.now(UTC).timestamp() + 49 * 3600):
        page = readers.client.get(confirm_path(mail))
        assert page.status_code == 410 and "This link has expired" in page.text and 'href="/subscribe"' in page.text
    assert readers.row().status == "pending"


def test_a_reused_confirmation_link_is_refused(readers):
    readers.subscribe()
    [mail] = readers.mails()
    assert confirm(readers, mail).status_code == 200
    path = confirm_path(mail)
    again = readers.client.get(path)
    assert again.status_code == 410 and "already used" in again.text
    # Even with the form of the first visit.
    assert readers.client.post(path, data={"csrf": "x"}).status_code == 410


def test_confirming_needs_the_pages_own_form(readers):
    readers.subscribe()
    [mail] = readers.mails()
    path = confirm_path(mail)
    csrf = csrf_of(readers.client.get(path).text)
    assert readers.client.post(path, data={}).status_code == 400
    assert readers.client.post(path, data={"csrf": csrf}, headers={"Origin": "https://evil.example"}).status_code == 403
    assert readers.row().status == "pending"
    assert readers.client.post(path, data={"csrf": csrf}, headers={"Origin": PUBLIC}).status_code == 200
    assert readers.row().status == "active"
