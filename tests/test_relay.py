"""A paused edition probes the relay and resumes by itself (worker/delivery/relay.py), against
a real SMTP server whose greeting and MAIL replies are scripted."""

from datetime import UTC, datetime, timedelta

import pytest

from tests.support.data import add_subscribers, ledger, load_stories
from worker.delivery.plan import get_edition, pause_edition, plan_edition, resume_edition
from worker.delivery.relay import PROBE_CAP, pause_for_relay, probe_delay, resume_probed
from worker.delivery.schedule import reconcile
from worker.digest import week_window

KEY = "weekly-2025-W05"
NOW = datetime(2025, 2, 3, 7, 0, tzinfo=UTC)


@pytest.fixture
def paused(engine, smtp_settings, tmp_path):
    load_stories(engine, tmp_path)
    add_subscribers(engine, 6)
    planned = plan_edition(engine, key=KEY, kind="weekly", window=week_window("2025-W05", smtp_settings.tz), now=NOW)
    assert pause_for_relay(engine, planned.edition_id, "paused: 20 failures in a row", now=NOW,
                           settings=smtp_settings)
    return engine, smtp_settings, planned.edition_id


def test_probes_back_off_from_the_base_to_half_an_hour(smtp_settings):
    minutes = [probe_delay(smtp_settings, n) / timedelta(minutes=1) for n in range(8)]
    assert minutes == [1, 2, 4, 8, 16, 30, 30, 30]
    assert probe_delay(smtp_settings, 10_000) == PROBE_CAP


def test_nothing_is_probed_before_its_time(paused, smtp_server):
    engine, settings, edition_id = paused
    smtp_server.plan.greeting = "421 4.3.2 try later"
    assert resume_probed(engine, settings, NOW + timedelta(seconds=59)) == []
    assert smtp_server.connections == 0
    assert get_edition(engine, edition_id).state == "paused"


def test_a_relay_still_refusing_pushes_the_next_probe_out_then_an_answer_resumes(paused, smtp_server):
    engine, settings, edition_id = paused
    smtp_server.plan.greeting = "421 4.3.2 try later"
    at = NOW + timedelta(minutes=1)
    assert resume_probed(engine, settings, at) == []
    edition = get_edition(engine, edition_id)
    assert (edition.state, edition.probes, edition.resume_at) == ("paused", 1, at + timedelta(minutes=2))
    smtp_server.plan.greeting = None
    smtp_server.plan.mail = "451 4.3.0 queue full"
    assert resume_probed(engine, settings, at + timedelta(minutes=2)) == []
    edition = get_edition(engine, edition_id)
    assert (edition.probes, edition.resume_at) == (2, at + timedelta(minutes=6))
    smtp_server.plan.mail = None
    back = at + timedelta(minutes=6)
    assert resume_probed(engine, settings, back) == [KEY]
    edition = get_edition(engine, edition_id)
    assert (edition.state, edition.reason, edition.resume_at, edition.probes) == ("sending", None, None, 0)
    assert edition.note == f"resumed by itself at {back.isoformat()}: the relay takes mail again"
    assert smtp_server.received == []  # a probe sends nothing


def test_a_sender_refusal_at_the_probe_leaves_the_edition_for_a_person(paused, smtp_server):
    engine, settings, edition_id = paused
    smtp_server.plan.mail = "553 5.7.1 sender not allowed"
    assert resume_probed(engine, settings, NOW + timedelta(minutes=1)) == []
    edition = get_edition(engine, edition_id)
    assert (edition.state, edition.resume_at) == ("paused", None)
    assert edition.reason == "paused: sender refused: 553 5.7.1 sender not allowed"
    assert resume_probed(engine, settings, NOW + timedelta(days=1)) == []  # never probed again


def test_an_operators_pause_is_never_ended_by_a_probe(engine, smtp_settings, tmp_path, smtp_server):
    load_stories(engine, tmp_path)
    add_subscribers(engine, 6)
    planned = plan_edition(engine, key=KEY, kind="weekly", window=week_window("2025-W05", smtp_settings.tz), now=NOW)
    assert pause_edition(engine, planned.edition_id, "paused by operator")
    assert resume_probed(engine, smtp_settings, NOW + timedelta(days=1)) == []
    assert get_edition(engine, planned.edition_id).state == "paused"


def test_a_manual_resume_ends_the_probing(paused):
    engine, settings, edition_id = paused
    assert resume_edition(engine, edition_id)
    edition = get_edition(engine, edition_id)
    assert (edition.state, edition.resume_at, edition.probes) == ("sending", None, 0)


def test_the_reconcilers_tick_resumes_and_hands_out_in_the_same_tick(paused, smtp_server):
    engine, settings, edition_id = paused
    published = []
    out = reconcile(engine, settings, lambda _e, ids: published.append(ids), NOW + timedelta(minutes=1),
                    weekly=False, sources=False)
    assert out.resumed == [KEY]
    assert sum(len(ids) for ids in published) == sum(1 for s, _ in ledger(engine, KEY).values() if s == "pending") > 0
