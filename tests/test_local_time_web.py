"""The zone on the readers' pages: a plain text field with the zones offered as a datalist,
checked as imports check it; a sign-up's zone waits for its confirmation like its name."""

from __future__ import annotations

import pytest
from markupsafe import escape

from tests.test_readers_signup import Readers, confirm, csrf_of, for_readers
from worker.readers.subscribers import add_subscriber, make_input
from worker.tokens import manage_token

UNKNOWN = "Unknown time zone {!r} (an IANA name such as Europe/Berlin)."


@pytest.fixture
def readers(engine, settings):
    return Readers(engine, for_readers(settings, timezone="Europe/Berlin"))


def _subscribe(readers, **fields):
    return readers.client.post("/subscribe", data={"email": "anna@example.org", "regions": "RU,UA", **fields})


def _manage(readers, email):
    path = f"/manage/{manage_token('test-secret-key', readers.row(email).id, readers.row(email).link_key)}"
    return path, readers.client.get(path)


def test_the_sign_up_form_offers_the_zones_without_a_script(readers):
    page = readers.client.get("/subscribe")
    assert page.status_code == 200
    assert 'name="timezone" type="text" maxlength="64" list="zones"' in page.text
    assert '<option value="Pacific/Auckland">' in page.text and '<option value="Europe/Moscow">' in page.text
    assert "<script" not in page.text


def test_a_sign_up_zone_is_stored_canonical_and_applied_when_confirmed(readers):
    assert _subscribe(readers, timezone="pacific/AUCKLAND").status_code == 200
    row = readers.row()
    assert (row.status, row.timezone, row.confirm_timezone) == ("pending", None, "Pacific/Auckland")
    [mail] = readers.mails()
    confirm(readers, mail)
    row = readers.row()
    assert (row.status, row.timezone, row.confirm_timezone) == ("active", "Pacific/Auckland", None)


def test_a_bad_zone_is_refused_on_the_form_and_in_json_and_nothing_is_stored(readers):
    page = _subscribe(readers, timezone="Mars/Olympus")
    assert page.status_code == 400
    assert str(escape(UNKNOWN.format("Mars/Olympus"))) in page.text
    assert 'value="Mars/Olympus"' in page.text  # kept in the field, to correct
    hostile = _subscribe(readers, timezone='"><b>x</b>')
    assert hostile.status_code == 400 and "<b>x</b>" not in hostile.text
    answer = readers.client.post("/subscribe", json={"email": "anna@example.org", "regions": ["RU"],
                                                     "timezone": ["Europe/Berlin"]})
    assert answer.status_code == 400
    assert answer.json["errors"] == {"timezone": "The time zone must be text such as Europe/Berlin."}
    assert readers.row() is None and readers.mails() == []


def test_a_sign_up_cannot_retime_an_active_reader_even_once_confirmed(readers):
    add_subscriber(readers.engine, make_input("anna@example.org", None, "RU", "Europe/Berlin"))
    _subscribe(readers, timezone="Asia/Tokyo")
    assert readers.row().timezone == "Europe/Berlin"
    [mail] = readers.mails()
    confirm(readers, mail)
    # A form anyone can fill in never retimes a known reader: the manage page does (issue 21).
    assert readers.row().timezone == "Europe/Berlin"


def test_the_manage_page_shows_changes_and_clears_the_zone(readers):
    add_subscriber(readers.engine, make_input("anna@example.org", "Anna", "RU UA"))
    path, page = _manage(readers, "anna@example.org")
    assert "Now: 07:00 in Europe/Moscow." in page.text  # no zone of her own: her first region's

    def save(zone):
        return readers.client.post(path, data={"csrf": csrf_of(readers.client.get(path).text),
                                               "order": ["RU", "UA"], "name": "Anna", "timezone": zone})

    assert save("america/los_angeles").status_code == 303
    assert readers.row().timezone == "America/Los_Angeles"
    assert 'value="America/Los_Angeles"' in readers.client.get(path).text
    refused = save("Europe/Nowhere")
    assert refused.status_code == 400 and "Nothing was saved" in refused.text
    assert str(escape(UNKNOWN.format("Europe/Nowhere"))) in refused.text
    assert readers.row().timezone == "America/Los_Angeles"
    assert save("").status_code == 303 and readers.row().timezone is None
    # A form from before the field existed keeps the zone.
    readers.client.post(path, data={"csrf": csrf_of(readers.client.get(path).text), "order": ["RU", "UA"],
                                    "name": "Anna", "timezone": "Asia/Tokyo"})
    readers.client.post(path, data={"csrf": csrf_of(readers.client.get(path).text), "order": ["UA", "RU"],
                                    "name": "Anna"})
    assert (readers.row().timezone, readers.row().regions) == ("Asia/Tokyo", "UA RU")
