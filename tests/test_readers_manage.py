"""The manage page and the per-region leave links: what a reader can change from a digest,
behind its signed link, with CSRF protection; changes reach the next plan, never an edition
already being sent; leaving the last region is leaving."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from email import policy
from email.parser import BytesParser

import pytest
import sqlalchemy as sa
import time_machine

from tests.test_readers_signup import PUBLIC, Readers, confirm, csrf_of, for_readers
from worker.delivery import pipeline
from worker.delivery.pipeline import run_inline
from worker.delivery.plan import plan_edition
from worker.delivery.senders import make_sender
from worker.digest import week_window
from worker.readers.subscribers import purge_subscriber
from worker.store.db import session_scope
from worker.store.models import Delivery
from worker.tokens import form_token, manage_token, unsubscribe_token

ANNA = "anna.petrova@example.org"


@pytest.fixture
def readers(sample_engine, settings):
    return Readers(sample_engine, for_readers(settings))


def _manage_path(readers, email=ANNA):
    return f"/manage/{manage_token('test-secret-key', readers.row(email).id, readers.row(email).link_key)}"


def _form(page_text):
    """What a browser posts for the manage form as shown: csrf, the order, the name."""
    name = re.search(r'id="name" name="name"[^>]* value="([^"]*)"', page_text)
    return {"csrf": csrf_of(page_text), "order": re.findall(r'name="order" value="([A-Z]{2})"', page_text),
            "name": name[1] if name else ""}


def _post(readers, path, **changes):
    data = {**_form(readers.client.get(path).text), **changes}
    return readers.client.post(path, data=data)


def _plan(readers, week, key=None):
    pipeline._RENDERERS.clear()
    return plan_edition(readers.engine, key=key or f"weekly-{week}", kind="weekly",
                        window=week_window(week, readers.settings.tz), now=datetime.now(UTC))


def _send(readers, planned):
    pipeline._RENDERERS.clear()
    run_inline(readers.engine, readers.settings, planned.edition_id, make_sender(readers.settings))


def _digest(readers, email, edition):
    """The text and HTML parts of the copy `email` got of `edition` (file backend)."""
    for path in readers.settings.outbox_dir.glob("*.eml"):
        message = BytesParser(policy=policy.default).parsebytes(path.read_bytes())
        if message["To"].addresses[0].addr_spec == email and edition in message.get_body(("plain",)).get_content():
            return (message.get_body(("plain",)).get_content().replace("\r\n", "\n"),
                    message.get_body(("html",)).get_content())
    raise AssertionError(f"no {edition} for {email}")


def _regions_planned(readers, planned, email=ANNA):
    with session_scope(readers.engine) as session:
        return session.scalar(sa.select(Delivery.regions).where(
            Delivery.edition_id == planned.edition_id, Delivery.subscriber_id == readers.row(email).id))


def test_the_manage_page_shows_regions_in_order_and_changes_nothing_on_get(readers):
    page = readers.client.get(_manage_path(readers))
    assert page.status_code == 200 and ANNA in page.text and 'value="Anna Petrova"' in page.text
    assert page.text.index("Russia") < page.text.index(">Ukraine<")
    assert '<label for="add">Add a region</label>' in page.text and 'value="RU">Russian' not in page.text
    assert page.headers["Cache-Control"] == "no-store" and page.headers["Referrer-Policy"] == "same-origin"
    assert readers.events(ANNA) == [("subscribed", "import", "active", "RU UA")]


def test_add_remove_reorder_and_rename_from_the_manage_page(readers):
    path = _manage_path(readers)
    moved = _post(readers, path, down="RU")
    assert moved.status_code == 303 and moved.headers["Location"].endswith("?saved=1")
    assert readers.row(ANNA).regions == "UA RU"
    _post(readers, path, add="PL", remove="RU", name="Anna P.")
    assert (readers.row(ANNA).regions, readers.row(ANNA).name) == ("UA PL", "Anna P.")
    _post(readers, path, up="PL", name="")
    assert (readers.row(ANNA).regions, readers.row(ANNA).name) == ("PL UA", None)
    saved = readers.client.get(path + "?saved=1")
    assert "Saved. Your changes apply from the next edition." in saved.text
    assert readers.events(ANNA)[1:] == [
        ("regions-changed", "manage-page", "active", "UA RU"),
        ("regions-changed", "manage-page", "active", "UA PL"), ("name-changed", "manage-page", "active", "UA PL"),
        ("regions-changed", "manage-page", "active", "PL UA"), ("name-changed", "manage-page", "active", "PL UA"),
    ]


def test_a_stale_page_order_is_ignored_rather_than_trusted(readers):
    path = _manage_path(readers)
    form = _form(readers.client.get(path).text)
    readers.client.post(path, data={**form, "order": ["RU", "DE"]})
    assert readers.row(ANNA).regions == "RU UA"


@pytest.mark.parametrize(("changes", "error"), [
    ({"add": "XX"}, "Unknown region code"),
    ({"name": "Anna\r\nBcc: x@example.org"}, "Name contains a line break"),
    ({"name": "x" * 300}, "Name too long"),
])
def test_bad_changes_save_nothing(readers, changes, error):
    page = _post(readers, _manage_path(readers), **changes)
    assert page.status_code == 400 and error in page.text and "Nothing was saved" in page.text
    assert (readers.row(ANNA).regions, readers.row(ANNA).name) == ("RU UA", "Anna Petrova")


def test_removing_every_region_or_leaving_all_unsubscribes(readers):
    page = _post(readers, _manage_path(readers), remove=["RU", "UA"])
    assert page.status_code == 200 and "You are unsubscribed" in page.text
    row = readers.row(ANNA)
    assert (row.status, row.regions) == ("unsubscribed", "RU UA")
    path = _manage_path(readers, "oleksandr.koval@example.com")
    page = _post(readers, path, action="leave")
    assert "You are unsubscribed" in page.text
    assert readers.events("oleksandr.koval@example.com")[-1] == ("unsubscribed", "manage-page", "unsubscribed", "UA RU")


def test_the_manage_form_is_protected_against_cross_site_posts(readers):
    path = _manage_path(readers)
    form = _form(readers.client.get(path).text)
    other = readers.row("oleksandr.koval@example.com").id
    for data, headers, status in [
        ({**form, "csrf": ""}, {}, 400),
        ({**form, "csrf": form_token("test-secret-key", subscriber_id=other, purpose="manage")}, {}, 400),
        ({**form, "csrf": form_token("test-secret-key", subscriber_id=readers.row(ANNA).id, purpose="leave")}, {}, 400),
        ({**form, "csrf": form_token("another-key", subscriber_id=readers.row(ANNA).id, purpose="manage")}, {}, 400),
        (form, {"Origin": "https://evil.example"}, 403),
        (form, {"Origin": "null"}, 403),
        (form, {"Referer": "https://evil.example/x"}, 403),
    ]:
        page = readers.client.post(path, data={**data, "action": "leave"}, headers=headers)
        assert page.status_code == status, (data, headers)
        assert "Open the page again" in page.text
    assert readers.row(ANNA).status == "active"
    with time_machine.travel(datetime.now(UTC).timestamp() + 7 * 3600):
        assert readers.client.post(path, data={**form, "action": "leave"}).status_code == 400
    ok = readers.client.post(path, data={**form, "action": "leave"}, headers={"Origin": PUBLIC})
    assert ok.status_code == 200 and readers.row(ANNA).status == "unsubscribed"


def test_forged_and_dead_manage_links_are_refused(readers):
    anna = readers.row(ANNA)
    for bad in [manage_token("another-key", anna.id, anna.link_key), unsubscribe_token("test-secret-key", anna.id, anna.link_key),
                manage_token("test-secret-key", anna.id, anna.link_key)[:-2] + "xx", "nonsense"]:
        assert readers.client.get(f"/manage/{bad}").status_code == 400
        assert readers.client.get(f"/manage/{bad}/leave/RU").status_code == 400
    readers.subscribe("pending@example.org")
    pending = manage_token("test-secret-key", readers.row("pending@example.org").id,
                           readers.row("pending@example.org").link_key)
    assert readers.client.get(f"/manage/{pending}").status_code == 410  # a sign-up has nothing to manage yet
    path = _manage_path(readers)
    purge_subscriber(readers.engine, ANNA)
    assert readers.client.get(path).status_code == 410


def test_an_unsubscribed_reader_can_ask_to_come_back_and_confirms_by_mail(readers):
    path = _manage_path(readers)
    _post(readers, path, action="leave")
    page = readers.client.get(path)
    assert "does not get Melange News Weekly" in page.text and "Send me a confirmation link" in page.text
    # The form of an unsubscribed reader changes nothing but this.
    assert _post(readers, path, add="PL").status_code == 200 and readers.row(ANNA).regions == "RU UA"
    sent = _post(readers, path, action="resubscribe")
    assert "Check your inbox" in sent.text and readers.row(ANNA).status == "unsubscribed"
    [mail] = readers.mails()
    assert confirm(readers, mail).status_code == 200
    assert readers.row(ANNA).status == "active"
    assert [e[:2] for e in readers.events(ANNA)[-3:]] == [
        ("unsubscribed", "manage-page"), ("requested", "manage-page"), ("reactivated", "confirm-link")]


def test_manage_changes_reach_the_next_plan_and_not_an_edition_already_sending(readers):
    sending = _plan(readers, "2025-W05")
    assert _regions_planned(readers, sending) == "RU UA"
    _post(readers, _manage_path(readers), remove="RU", add="PL")
    _send(readers, sending)
    text, _ = _digest(readers, ANNA, "weekly-2025-W05")
    assert "Russia\n=====" in text and "Ukraine\n=====" in text and "Poland\n=====" not in text
    following = _plan(readers, "2025-W06")
    assert _regions_planned(readers, following) == "UA PL"
    _send(readers, following)
    text, _ = _digest(readers, ANNA, "weekly-2025-W06")
    assert "Russia\n=====" not in text and text.index("Ukraine\n=====") < text.index("Poland\n=====")


def test_the_digest_links_lead_to_the_manage_page_and_each_regions_leave_page(readers):
    _send(readers, _plan(readers, "2025-W05"))
    _, html = _digest(readers, ANNA, "weekly-2025-W05")
    links = dict(re.findall(r'<a href="' + re.escape(PUBLIC) + r'(/[^"]+)"[^>]*>([^<]+)</a>', html))
    by_text = {text: href for href, text in links.items()}
    assert {"Manage your regions", "Unsubscribe", "View online", "Stop Russia news",
            "Stop Ukraine news"} <= set(by_text)
    manage = by_text["Manage your regions"]
    assert by_text["Stop Ukraine news"] == manage + "/leave/UA"
    assert readers.client.get(manage).status_code == 200
    leave = readers.client.get(by_text["Stop Ukraine news"])
    assert leave.status_code == 200 and "Stop Ukraine news?" in leave.text
    assert "Russia only" in leave.text
    assert readers.row(ANNA).regions == "RU UA"  # GET never changes anything


def test_leaving_one_region_then_the_last_one(readers):
    path = _manage_path(readers)
    page = readers.client.get(f"{path}/leave/UA")
    done = readers.client.post(f"{path}/leave/UA", data={"csrf": csrf_of(page.text)})
    assert done.status_code == 200 and "No more Ukraine news" in done.text
    assert (readers.row(ANNA).status, readers.row(ANNA).regions) == ("active", "RU")
    again = readers.client.post(f"{path}/leave/UA", data={"csrf": csrf_of(page.text)})
    assert again.status_code == 200 and "You do not get news from Ukraine" in again.text
    last = readers.client.get(f"{path}/leave/RU")
    assert "the only region you follow" in last.text
    done = readers.client.post(f"{path}/leave/RU", data={"csrf": csrf_of(last.text)})
    assert "You are unsubscribed" in done.text
    assert (readers.row(ANNA).status, readers.row(ANNA).regions) == ("unsubscribed", "RU")
    assert readers.events(ANNA)[1:] == [("regions-changed", "region-link", "active", "RU"),
                                        ("unsubscribed", "region-link", "unsubscribed", "RU")]
    assert "You are not subscribed" in readers.client.get(f"{path}/leave/RU").text


def test_leaving_the_last_region_stops_an_edition_in_flight(readers):
    sending = _plan(readers, "2025-W05")
    path = _manage_path(readers, "james.whitfield@example.com")  # GB only
    page = readers.client.get(f"{path}/leave/GB")
    readers.client.post(f"{path}/leave/GB", data={"csrf": csrf_of(page.text)})
    _send(readers, sending)
    with session_scope(readers.engine) as session:
        row = session.scalar(sa.select(Delivery).where(
            Delivery.edition_id == sending.edition_id,
            Delivery.subscriber_id == readers.row("james.whitfield@example.com").id))
    assert (row.state, row.skip_reason) == ("skipped", "unsubscribed")


def test_leave_links_take_only_region_codes(readers):
    path = _manage_path(readers)
    assert readers.client.get(f"{path}/leave/XX").status_code == 404
    assert readers.client.get(f"{path}/leave/%0d%0aX").status_code == 404
    lower = readers.client.get(f"{path}/leave/ua")
    assert lower.status_code == 308 and lower.headers["Location"].endswith(f"{path}/leave/UA")
    leave = readers.client.get(f"{path}/leave/UA")
    csrf = csrf_of(leave.text)
    assert readers.client.post(f"{path}/leave/UA", data={"csrf": ""}).status_code == 400
    assert readers.client.post(f"{path}/leave/UA", data={"csrf": csrf},
                               headers={"Origin": "https://evil.example"}).status_code == 403
    assert readers.row(ANNA).regions == "RU UA"


def test_one_click_stays_rfc_8058_and_is_recorded(readers):
    token = unsubscribe_token("test-secret-key", readers.row(ANNA).id, readers.row(ANNA).link_key)
    done = readers.client.post(f"/unsubscribe/{token}", data="List-Unsubscribe=One-Click",
                               content_type="application/x-www-form-urlencoded",
                               headers={"Origin": "https://mail.example"})
    assert done.status_code == 200 and "You are unsubscribed" in done.text and done.headers.get("Location") is None
    assert readers.events(ANNA)[-1] == ("unsubscribed", "one-click", "unsubscribed", "RU UA")
    oleksandr = readers.row("oleksandr.koval@example.com")
    token = unsubscribe_token("test-secret-key", oleksandr.id, oleksandr.link_key)
    page = readers.client.get(f"/unsubscribe/{token}")
    readers.client.post(f"/unsubscribe/{token}", data=dict(re.findall(r'name="([^"]+)" value="([^"]+)"', page.text)))
    assert readers.events("oleksandr.koval@example.com")[-1][:2] == ("unsubscribed", "unsubscribe-page")
