"""`newsletter status` shows late bounces and complaints per edition, with their rates,
and warns past the bulk senders' complaint limits."""

from __future__ import annotations

import json

import sqlalchemy as sa

from tests.bounce_support import NOW, RETURN_PATH, arf, dsn, sent_editions
from worker.bounces.apply import apply_report
from worker.bounces.reports import read_report
from worker.store.db import session_scope
from worker.store.models import Delivery, Subscriber


def _report(engine, data: bytes) -> None:
    for report in read_report(data, return_path=RETURN_PATH, message_id_domain="localhost").reports:
        apply_report(engine, report, transient_limit=5, now=NOW)


def _more_sent(engine, count: int) -> None:
    """`count` more sent rows in edition 1, in bulk."""
    with session_scope(engine) as session:
        edition_id = session.scalar(sa.select(Delivery.edition_id).limit(1))
        session.execute(sa.insert(Subscriber), [
            {"email": f"r{n}@example.org", "email_key": f"r{n}@example.org", "regions": "RU", "status": "active"}
            for n in range(count)])
        ids = session.scalars(sa.select(Subscriber.id).where(Subscriber.email.like("r%@example.org"))).all()
        session.execute(sa.insert(Delivery), [
            {"edition_id": edition_id, "subscriber_id": i, "regions": "RU", "state": "sent", "sent_at": NOW}
            for i in ids])


def test_status_counts_late_reports_and_sounds_the_alarm(engine, run_cli):
    emails = [f"reader{n}@example.net" for n in range(10)]
    ids = sent_editions(engine, emails)
    _report(engine, dsn(emails[0], to=RETURN_PATH.for_delivery(ids[(1, emails[0])])))
    _report(engine, dsn(emails[1], status="4.2.2", to=RETURN_PATH.for_delivery(ids[(1, emails[1])]),
                        report_id="<t@mx>"))
    _report(engine, arf(None, mail_from=RETURN_PATH.for_delivery(ids[(1, emails[2])])))
    result = run_cli("status", "weekly-2025-W01")
    assert result.code == 0, result.err
    assert ("late reports over 10 sent: bounced 1 (10.00%), temporary failures 1 (10.00%), "
            "complaints 1 (10.000%)") in result.out
    assert "ALARM: complaint rate 10.000% is at or over 0.3 %" in result.out
    listing = run_cli("status")
    assert "ALARM: complaint rate" in listing.out
    data = json.loads(run_cli("status", "weekly-2025-W01", "--json").out)
    assert data["late"] == {"accepted": 10, "permanent": 1, "transient": 1, "complaint": 1, "sender": 0,
                            "review": 0, "dismissed": 0,
                            "rates": {"permanent": 0.1, "transient": 0.1, "complaint": 0.1, "sender": 0.0,
                                      "review": 0.0, "dismissed": 0.0},
                            "complaint_alert": "alarm",
                            "reasons": {"feedback": 1, "mailboxfull": 1, "userunknown": 1},
                            "bounce_rate": {"tried": 10, "at_rcpt": 0, "late": 1, "rate": 0.1, "alert": "alarm"}}
    assert "  by reason: " in result.out and "userunknown 1" in result.out
    assert "ALARM: bounce rate 10.00% is at or over 5 % (0 refused at RCPT, 1 bounced late, of 10 tried)" in result.out


def test_a_complaint_rate_over_a_tenth_of_a_percent_warns(engine, run_cli):
    ids = sent_editions(engine, ["a@example.net"])
    _more_sent(engine, 499)
    _report(engine, arf(None, mail_from=RETURN_PATH.for_delivery(ids[(1, "a@example.net")])))
    out = run_cli("status", "weekly-2025-W01").out
    assert "complaints 1 (0.200%)" in out
    assert "WARNING: complaint rate 0.200% is over 0.1 %" in out and "ALARM" not in out


def test_status_says_nothing_of_late_reports_when_there_are_none(engine, run_cli):
    sent_editions(engine, ["a@example.net"])
    out = run_cli("status", "weekly-2025-W01").out
    assert "late reports" not in out and "complaint rate" not in out


def test_the_bounce_rate_warns_from_two_percent_counting_refusals_at_rcpt(engine, run_cli):
    """3 of 100 refused at RCPT (no late report): 3 % is over the 2 % warning, under the alarm."""
    ids = sent_editions(engine, ["a@example.net"])
    _more_sent(engine, 99)
    with session_scope(engine) as session:
        rows = session.scalars(sa.select(Delivery).order_by(Delivery.id.desc()).limit(3)).all()
        for row in rows:
            row.state, row.last_code, row.last_reply = "bounced", 550, "5.1.1 user unknown"
    out = run_cli("status", "weekly-2025-W01").out
    assert ("WARNING: bounce rate 3.00% is over 2 % (3 refused at RCPT, 0 bounced late, of 100 tried)") in out
    assert "ALARM" not in out
    _report(engine, dsn("a@example.net", to=RETURN_PATH.for_delivery(ids[(1, "a@example.net")])))
    data = json.loads(run_cli("status", "weekly-2025-W01", "--json").out)
    assert data["late"]["bounce_rate"] == {"tried": 100, "at_rcpt": 3, "late": 1, "rate": 0.04, "alert": "warn"}
    assert "WARNING: bounce rate" in run_cli("status").out


def test_metrics_have_late_reports_by_reason_the_bounce_rate_and_the_reviews(engine, settings):
    from tests.test_metrics_state import _scrape

    emails = [f"reader{n}@example.net" for n in range(10)]
    ids = sent_editions(engine, emails)
    _report(engine, dsn(emails[0], to=RETURN_PATH.for_delivery(ids[(1, emails[0])])))
    _report(engine, dsn(emails[1], status="5.0.0", diagnostic="smtp; 550 5.0.0 Blocked by spamhaus",
                        to=RETURN_PATH.for_delivery(ids[(1, emails[1])]), report_id="<s@mx>"))
    _report(engine, dsn(emails[2], status="5.0.0", diagnostic="smtp; 550 no",
                        to=RETURN_PATH.for_delivery(ids[(1, emails[2])]), report_id="<r@mx>"))
    scraped = _scrape(engine, settings)
    edition = ("edition", "weekly-2025-W01")
    assert scraped["newsletter_late_bounce_reasons"] == {
        (edition, ("reason", "blocked")): 1, (edition, ("reason", "undefined")): 1,
        (edition, ("reason", "userunknown")): 1}
    assert scraped["newsletter_bounce_rate"] == {(edition,): 0.1}
    assert scraped["newsletter_bounce_reports_for_review"] == {(): 1.0}
    assert scraped["newsletter_late_bounces"][(edition, ("kind", "review"))] == 1
