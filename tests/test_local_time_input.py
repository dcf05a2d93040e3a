"""Readers' zones on the way in: IANA names checked and stored canonical, a bad one a
clear per-row or per-field error; each region's main zone from the tz tables."""

import json

import pytest
from sqlalchemy import select

from worker.readers.subscribers import import_csv
from worker.settings import Settings
from worker.store.db import session_scope
from worker.store.models import Subscriber
from worker.zones import _CAPITAL_ZONES, ZoneError, country_zones, normalise_zone, region_zone

UNKNOWN = "unknown time zone {!r} (an IANA name such as Europe/Berlin)"


def zones(engine) -> dict[str, str | None]:
    with session_scope(engine) as session:
        return dict(session.execute(select(Subscriber.email, Subscriber.timezone)).all())


@pytest.mark.parametrize(("raw", "stored"), [
    ("Europe/Berlin", "Europe/Berlin"), (" pacific/auckland ", "Pacific/Auckland"),
    ("AMERICA/LOS_ANGELES", "America/Los_Angeles"), ("UTC", "UTC"), ("Europe/Kiev", "Europe/Kiev"),
])
def test_a_zone_is_stored_as_iana_spells_it(raw, stored):
    assert normalise_zone(raw) == stored


@pytest.mark.parametrize(("raw", "message"), [
    ("Mars/Olympus", UNKNOWN.format("Mars/Olympus")),
    ("../../etc/passwd", UNKNOWN.format("../../etc/passwd")),
    ("/usr/share/zoneinfo/UTC", UNKNOWN.format("/usr/share/zoneinfo/UTC")),
    ("CET-1CEST", UNKNOWN.format("CET-1CEST")),
    ("Europe/Berlin\x00", UNKNOWN.format("Europe/Berlin\x00")),
    ("Europe/<b>Berlin</b>", UNKNOWN.format("Europe/<b>Berlin</b>")),
    ("A/" + "b" * 200, UNKNOWN.format(("A/" + "b" * 200)[:64])),
    ("   ", "no time zone"),
])
def test_a_bad_zone_is_refused_with_the_reason(raw, message):
    with pytest.raises(ZoneError) as caught:
        normalise_zone(raw)
    assert str(caught.value) == message


def test_each_region_has_a_main_zone_from_the_tz_tables():
    assert region_zone("DE") == "Europe/Berlin" and region_zone("NZ") == "Pacific/Auckland"
    assert region_zone("RU") == "Europe/Moscow"      # zone.tab lists Kaliningrad first
    assert region_zone("UA") == "Europe/Kyiv"        # ... and Simferopol
    assert region_zone("US") == "America/New_York"
    assert region_zone("BV") is None                 # uninhabited: NEWSLETTER_TIMEZONE
    assert region_zone("RU", {"RU": "Asia/Vladivostok"}) == "Asia/Vladivostok"
    for code, zone in _CAPITAL_ZONES.items():        # a tz release that moves one fails here
        assert zone in country_zones()[code], code


def test_the_region_zone_setting_is_checked():
    settings = Settings(region_timezones=json.dumps({"ru": "asia/vladivostok"}))
    assert settings.region_timezones == {"RU": "Asia/Vladivostok"}
    with pytest.raises(ValueError, match="RU: unknown time zone 'Mars/X'"):
        Settings(region_timezones='{"RU": "Mars/X"}')
    with pytest.raises(ValueError, match="unknown region code 'XX'"):
        Settings(region_timezones='{"XX": "Europe/Berlin"}')


def test_the_csv_timezone_column_is_optional_checked_and_stored_canonical(engine, tmp_path):
    path = tmp_path / "readers.csv"
    path.write_text(
        "email,name,regions,timezone\n"
        "a@example.org,A,DE,pacific/auckland\n"
        "b@example.org,B,RU,\n"
        "c@example.org,C,US,Mars/Olympus\n"
        "d@example.org,D,US,../../etc/passwd\n"
        "e@example.org,E,US,America/Los_Angeles\n"
    )
    report = import_csv(engine, path)
    assert report.added == 3
    assert report.rejected == [(4, UNKNOWN.format("Mars/Olympus")), (5, UNKNOWN.format("../../etc/passwd"))]
    assert zones(engine) == {"a@example.org": "Pacific/Auckland", "b@example.org": None,
                             "e@example.org": "America/Los_Angeles"}
    # Without the column, zones stay; with it, an empty cell clears one and a bad cell changes nothing.
    path.write_text("email,name,regions\na@example.org,A,DE\n")
    assert import_csv(engine, path).unchanged == 1
    path.write_text("email,name,regions,timezone\na@example.org,A,DE,\ne@example.org,E,US,Nowhere/Land\n")
    report = import_csv(engine, path)
    assert report.updated == 1 and report.rejected == [(3, UNKNOWN.format("Nowhere/Land"))]
    assert zones(engine) == {"a@example.org": None, "b@example.org": None, "e@example.org": "America/Los_Angeles"}


def test_the_cli_sets_and_shows_a_zone(engine, run_cli):
    assert run_cli("subscribers", "add", "a@example.org", "--regions", "RU", "--timezone", "asia/tokyo").code == 0
    shown = run_cli("subscribers", "show", "a@example.org")
    assert "  zone:     Asia/Tokyo\n" in shown.out
    bad = run_cli("subscribers", "add", "a@example.org", "--regions", "RU", "--timezone", "Mars/Olympus")
    assert bad.code == 2 and bad.err.strip() == "error: " + UNKNOWN.format("Mars/Olympus")
    assert zones(engine) == {"a@example.org": "Asia/Tokyo"}
    assert run_cli("subscribers", "add", "a@example.org", "--regions", "RU").code == 0  # no option: kept
    assert zones(engine) == {"a@example.org": "Asia/Tokyo"}
    assert run_cli("subscribers", "add", "a@example.org", "--regions", "RU", "--timezone", "").code == 0
    shown = run_cli("subscribers", "show", "a@example.org")
    assert "  zone:     - (sent by Europe/Moscow, the first region's zone)\n" in shown.out
    record = json.loads(run_cli("subscribers", "show", "a@example.org", "--json").out)
    assert record["timezone"] is None and record["send_zone"] == {"zone": "Europe/Moscow", "from": "region"}
    run_cli("subscribers", "add", "b@example.org", "--regions", "BV")
    assert "  zone:     - (sent by UTC, NEWSLETTER_TIMEZONE)\n" in run_cli("subscribers", "show", "b@example.org").out


def test_a_zone_change_is_kept_in_the_readers_history(engine, run_cli, tmp_path):
    """Every change is kept with when and how: a zone change by the CLI, an import or the
    manage page is one `zone-changed` event (the zone itself is on the row); a change that
    changes nothing records nothing."""
    from datetime import UTC, datetime

    from worker.readers.manage import change_subscription
    from worker.store.models import ChangeVia

    def history():
        record = json.loads(run_cli("subscribers", "show", "a@example.org", "--json").out)
        return [(e["kind"], e["via"]) for e in record["history"]]

    run_cli("subscribers", "add", "a@example.org", "--regions", "RU", "--timezone", "Asia/Tokyo")
    assert history() == [("subscribed", "cli")]
    run_cli("subscribers", "add", "a@example.org", "--regions", "RU", "--timezone", "asia/tokyo")
    run_cli("subscribers", "add", "a@example.org", "--regions", "RU")
    assert history() == [("subscribed", "cli")]
    run_cli("subscribers", "add", "a@example.org", "--regions", "RU", "--timezone", "Europe/Berlin")
    path = tmp_path / "readers.csv"
    path.write_text("email,name,regions,timezone\na@example.org,,RU,\n")
    import_csv(engine, path)
    with session_scope(engine) as session:
        subscriber_id = session.scalar(select(Subscriber.id))
    change_subscription(engine, subscriber_id, regions=("RU", "UA"), name=None, via=ChangeVia.MANAGE_PAGE,
                        now=datetime.now(UTC), timezone="America/New_York")
    assert history() == [("subscribed", "cli"), ("zone-changed", "cli"), ("zone-changed", "import"),
                         ("regions-changed", "manage-page"), ("zone-changed", "manage-page")]
    assert zones(engine) == {"a@example.org": "America/New_York"}
