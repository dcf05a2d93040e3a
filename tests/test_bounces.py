"""Bounces and complaints after the relay accepted a message: VERP tags, reading reports,
what a report does, and the mailboxes they come from (worker/bounces)."""

from __future__ import annotations

import mailbox
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.bounce_support import (
    BOUNCE_ADDRESS,
    NOW,
    RETURN_PATH,
    SECRET,
    arf,
    bounce_events,
    delivery,
    dsn,
    events,
    sent_editions,
    subscriber,
)
from worker import metrics
from worker.bounces.apply import Applied, apply_report
from worker.bounces.mailboxes import process_maildir, process_mbox
from worker.bounces.reports import MAX_REPORT_BYTES, UnreadableReport, read_report
from worker.bounces.verp import ReturnPath, make_tag, read_tag
from worker.readers.history import subscriber_record
from worker.readers.signup import request_subscription
from worker.readers.subscribers import import_csv, make_input
from worker.store.models import BounceKind, ChangeVia

A, B = "alice@example.net", "bob@example.net"


def _read(data: bytes):
    return read_report(data, return_path=RETURN_PATH, message_id_domain="localhost")


def _apply(engine, data: bytes, limit: int = 5) -> list[Applied]:
    return [apply_report(engine, r, transient_limit=limit, now=NOW) for r in _read(data).reports]


# -- VERP ---------------------------------------------------------------------------

@given(st.integers(min_value=0, max_value=2**63 - 1))
def test_a_tag_names_its_delivery_in_any_case(delivery_id):
    address = RETURN_PATH.for_delivery(delivery_id)
    local = address.partition("@")[0]
    assert len(local) <= 64 and address.isascii() and address == address.lower()
    assert RETURN_PATH.delivery_of(address) == delivery_id
    assert RETURN_PATH.delivery_of(address.upper()) == delivery_id


def test_a_forged_or_foreign_tag_names_nothing():
    tag = make_tag(SECRET, 42)
    assert read_tag(SECRET, tag) == 42
    assert read_tag("another-key", tag) is None
    flipped = tag[:-1] + ("a" if tag[-1] != "a" else "b")
    assert read_tag(SECRET, flipped) is None
    for bad in ("", "0", "x" * 200, "bounces", "ab==", "é" * 10, "1234567890"):
        assert read_tag(SECRET, bad) is None
    # Our tag at another domain, or behind another local part, is not ours.
    assert RETURN_PATH.delivery_of(f"bounces+{tag}@evil.example") is None
    assert RETURN_PATH.delivery_of(f"other+{tag}@bounce.example.org") is None
    assert RETURN_PATH.delivery_of(f"<bounces+{tag}@BOUNCE.example.org>") == 42


def test_the_envelope_sender_is_cheap_per_message():
    """The hot path's cost of VERP: a tag and its quoting (bounded loosely: no wall clock)."""
    import timeit

    from worker.delivery.smtp import _quote_sender

    rp = ReturnPath.parse(BOUNCE_ADDRESS, SECRET)
    runs = 20_000
    seconds = timeit.timeit(lambda: _quote_sender(rp.for_delivery(123_456_789)), number=runs)
    assert _quote_sender(rp.for_delivery(7)) == f"<{rp.for_delivery(7)}>"
    print(f"VERP envelope sender: {seconds / runs * 1e6:.2f} us per message")


# -- reading reports -------------------------------------------------------------------

def test_a_dsn_reads_as_permanent_with_its_code_and_tag():
    tag = RETURN_PATH.for_delivery(77)
    (report,) = _read(dsn(A, to=tag)).reports
    assert (report.kind, report.source, report.recipient, report.delivery_id) == (BounceKind.PERMANENT, "dsn", A, 77)
    assert (report.code, report.smtp_code) == ("5.1.1", 550)
    assert report.diagnostic.startswith("550 5.1.1 <alice@example.net>")


@pytest.mark.parametrize(("status", "kind"), [
    ("5.1.1", BounceKind.PERMANENT), ("5.2.1", BounceKind.PERMANENT), ("5.4.4", BounceKind.PERMANENT),
    ("5.2.2", BounceKind.TRANSIENT), ("4.4.7", BounceKind.TRANSIENT), ("5.3.4", BounceKind.TRANSIENT),
    # Our side, never the reader's: policy and authentication (x.7.x), our sender refused.
    ("5.7.1", BounceKind.SENDER), ("5.7.26", BounceKind.SENDER), ("4.7.0", BounceKind.SENDER),
    ("5.1.8", BounceKind.SENDER), ("5.1.7", BounceKind.SENDER),
])
def test_a_failed_status_is_permanent_only_when_it_is_about_the_mailbox(status, kind):
    (report,) = _read(dsn(A, status=status, diagnostic=f"smtp; 550 {status} refused")).reports
    assert report.kind is kind


def test_exim_style_status_5_0_0_takes_the_diagnostics_code():
    (report,) = _read(dsn(A, status="5.0.0", diagnostic="smtp; 550 5.2.2 mailbox full")).reports
    assert (report.code, report.kind) == ("5.2.2", BounceKind.TRANSIENT)


def test_a_delayed_dsn_and_an_auto_reply_are_ignored():
    assert _read(dsn(A, action="delayed", status="4.4.1")).ignored.startswith("delivery status delayed")
    reply = b"From: alice@example.net\r\nTo: bounces@bounce.example.org\r\nAuto-Submitted: auto-replied\r\n" \
            b"Subject: Out of office\r\n\r\nI am away.\r\n"
    reading = _read(reply)
    assert reading.reports == [] and reading.ignored == "an auto-reply"


def test_an_arf_complaint_is_found_by_original_mail_from():
    tag = RETURN_PATH.for_delivery(9)
    (report,) = _read(arf(None, mail_from=tag)).reports
    assert (report.kind, report.source, report.delivery_id) == (BounceKind.COMPLAINT, "arf", 9)
    assert report.recipient == "redacted@fbl.example.net"  # the quoted To, as the FBL redacted it
    assert _read(arf(A, feedback_type="not-spam")).ignored.startswith("feedback report of type 'not-spam'")


def test_hostile_reports_are_bounded_and_never_crash():
    with pytest.raises(UnreadableReport, match="over the"):
        _read(b"x" * (MAX_REPORT_BYTES + 1))
    # A forged tag in the DSN's To names nothing; a header injection attempt in the
    # diagnostic comes out as one line; a huge recipient is dropped.
    forged = RETURN_PATH.for_delivery(5).replace("bounces+", "bounces+a")
    evil = dsn("x" * 400 + "@example.net", to=forged, diagnostic="smtp; 550 5.1.1 a\r\n Bcc: victim@example.org")
    (report,) = _read(evil).reports
    assert report.delivery_id is None and report.recipient is None
    assert "\n" not in report.diagnostic and "\r" not in report.diagnostic
    assert len(_read(b"\xff\xfe\x00garbage" * 1000).reports) == 0
    many = dsn(A).replace(b"Final-Recipient", b"X: y\r\n" * 5000 + b"Final-Recipient")
    assert [r.recipient for r in _read(many).reports] == [A]


# -- what a report does -----------------------------------------------------------------

def test_a_permanent_bounce_marks_the_delivery_and_the_subscriber(engine):
    ids = sent_editions(engine, [A, B])
    before = metrics.sample("newsletter_late_reports_total", kind="permanent", source="dsn")
    assert _apply(engine, dsn(A, to=RETURN_PATH.for_delivery(ids[(1, A)]))) == [Applied.APPLIED]
    row = delivery(engine, ids[(1, A)])
    assert (row.state, row.last_code) == ("bounced", 550)
    assert row.last_reply.startswith("late bounce (dsn): 550 5.1.1")
    assert subscriber(engine, A).status == "bounced"
    assert events(engine, A)[-1] == ("bounced", ChangeVia.BOUNCE.value, "late bounce 5.1.1 userunknown (dsn)")
    # Bob is untouched; the event is kept with its code.
    assert subscriber(engine, B).status == "active" and delivery(engine, ids[(1, B)]).state == "sent"
    (event,) = bounce_events(engine)
    assert (event.kind, event.code, event.delivery_id, event.subscriber_id) == (
        "permanent", "5.1.1", ids[(1, A)], subscriber(engine, A).id)
    # `subscribers show` tells it once.
    history = subscriber_record(engine, A)["history"]
    assert [(e["kind"], e["note"]) for e in history if e["kind"] == "bounced"] == [
        ("bounced", "late bounce 5.1.1 userunknown (dsn)")]
    assert metrics.sample("newsletter_late_reports_total", kind="permanent", source="dsn") == before + 1


def test_the_same_report_twice_changes_nothing(engine):
    ids = sent_editions(engine, [A])
    report = dsn(A, to=RETURN_PATH.for_delivery(ids[(1, A)]))
    assert _apply(engine, report) == [Applied.APPLIED]
    history = events(engine, A)
    assert _apply(engine, report) == [Applied.DUPLICATE]
    assert events(engine, A) == history and len(bounce_events(engine)) == 1


def test_the_tag_wins_over_the_address_in_the_report(engine):
    """A forwarded address bounces as another name: the tag still names our delivery."""
    ids = sent_editions(engine, [A, B])
    _apply(engine, dsn("forwarded@elsewhere.example", to=RETURN_PATH.for_delivery(ids[(1, B)])))
    assert subscriber(engine, B).status == "bounced" and subscriber(engine, A).status == "active"


def test_without_a_tag_our_message_id_then_the_address_find_the_delivery(engine):
    ids = sent_editions(engine, [A, B], editions=3)
    week2 = delivery(engine, ids[(2, A)])
    _apply(engine, dsn(A, to="postmaster@example.org", quoted_message_id=week2.message_id))
    assert delivery(engine, ids[(2, A)]).state == "bounced"
    assert delivery(engine, ids[(3, A)]).state == "sent"
    # The address alone, even with VERP off: anyone could have written it.
    report = dsn(B, to="postmaster@example.org", report_id="<other@mx>")
    (unverified,) = read_report(report, return_path=None, message_id_domain="localhost").reports
    assert apply_report(engine, unverified, transient_limit=5, now=NOW) is Applied.UNVERIFIED
    assert delivery(engine, ids[(3, B)]).state == "sent" and subscriber(engine, B).status == "active"


@pytest.mark.parametrize("verp", [True, False])
def test_a_mailed_report_naming_only_an_address_is_not_believed(engine, verp):
    """Anyone can mail us a DSN or a complaint naming a reader (a forged complaint would
    suppress them for good); only we can make a tag or a Message-ID. With VERP off too:
    the bounce mailbox is then the From address, which every reader knows."""
    ids = sent_editions(engine, [A])
    return_path = RETURN_PATH if verp else None

    def apply(data):
        return [apply_report(engine, r, transient_limit=5, now=NOW)
                for r in read_report(data, return_path=return_path, message_id_domain="localhost").reports]

    forged = dsn(A, to=BOUNCE_ADDRESS, report_id="<forged@attacker>")
    assert apply(forged) == [Applied.UNVERIFIED]
    forged_arf = arf(A, report_id="<forged-arf@attacker>")
    assert apply(forged_arf) == [Applied.UNVERIFIED]
    assert subscriber(engine, A).status == "active" and delivery(engine, ids[(1, A)]).state == "sent"
    assert bounce_events(engine) == []


def test_a_report_for_an_address_we_never_sent_to_is_ignored(engine):
    sent_editions(engine, [A])
    assert _apply(engine, dsn("stranger@example.net", to="postmaster@example.org")) == [Applied.UNMATCHED]
    forged = RETURN_PATH.for_delivery(999_999)
    assert _apply(engine, dsn("stranger@example.net", to=forged)) == [Applied.UNMATCHED]
    assert bounce_events(engine) == [] and subscriber(engine, A).status == "active"


def test_transient_failures_bounce_after_the_limit_in_a_row(engine):
    ids = sent_editions(engine, [A, B], editions=6)
    for week in (1, 2, 3, 4):
        _apply(engine, dsn(A, status="4.2.2", to=RETURN_PATH.for_delivery(ids[(week, A)]),
                           report_id=f"<t{week}@mx>"), limit=4)
        # Reported twice for the same edition (the relay retried): counted once.
        _apply(engine, dsn(A, status="4.2.2", to=RETURN_PATH.for_delivery(ids[(week, A)]),
                           report_id=f"<t{week}b@mx>"), limit=4)
        assert subscriber(engine, A).transient_bounces == week
    assert subscriber(engine, A).status == "bounced"
    assert events(engine, A)[-1] == ("bounced", "bounce", "temporary failures in 4 editions in a row")
    assert delivery(engine, ids[(4, A)]).state == "sent"  # the message itself was not refused for good
    # Bob: weeks 1, 2, then a clean week 3, then 5 and 6: the run is 2, not 4.
    for week in (1, 2, 5, 6):
        _apply(engine, dsn(B, status="4.2.2", to=RETURN_PATH.for_delivery(ids[(week, B)]),
                           report_id=f"<b{week}@mx>"), limit=4)
    assert subscriber(engine, B).status == "active"
    # Week 4 was also clean for Bob (only weeks 5 and 6 failed in a row).
    assert subscriber(engine, B).transient_bounces == 2


def test_refusals_for_our_side_are_shown_and_never_held_against_the_reader(engine, settings):
    """Six editions refused late with 5.7.26 (DMARC) or 4.7.0 (reputation): our fault, not
    the reader's. Recorded, shown by status with a warning, the reader stays active with
    no temporary failure counted (at RCPT the same codes pause the edition)."""
    from worker.cli.report import late_lines
    from worker.delivery.plan import find_edition
    from worker.delivery.status import edition_status

    ids = sent_editions(engine, [A], editions=6)
    for week in range(1, 7):
        status = "5.7.26" if week % 2 else "4.7.0"
        assert _apply(engine, dsn(A, status=status, to=RETURN_PATH.for_delivery(ids[(week, A)]),
                                  diagnostic=f"smtp; 550 {status} Message refused", report_id=f"<p{week}@mx>"),
                      limit=4) == [Applied.APPLIED]
    assert subscriber(engine, A).status == "active" and subscriber(engine, A).transient_bounces == 0
    assert events(engine, A) == []  # sent_editions adds them with no event: none since
    assert delivery(engine, ids[(6, A)]).state == "sent"
    with engine.connect() as conn:
        key = conn.exec_driver_sql("SELECT key FROM editions ORDER BY id DESC LIMIT 1").scalar()
    data = edition_status(engine, find_edition(engine, key))
    assert data.late["sender"] == 1 and data.late["transient"] == 0
    lines = late_lines(data)
    assert lines[1] == "  by reason: securityerror 1"
    assert lines[2].startswith("WARNING: 1 refused for our side after the relay accepted them (x.7.x")


def test_a_complaint_suppresses_for_good(engine, settings):
    ids = sent_editions(engine, [A])
    before = metrics.sample("newsletter_late_reports_total", kind="complaint", source="arf")
    assert _apply(engine, arf(None, mail_from=RETURN_PATH.for_delivery(ids[(1, A)]))) == [Applied.APPLIED]
    assert subscriber(engine, A).status == "complained"
    assert events(engine, A)[-1] == ("complained", "bounce", "complaint (arf)")
    assert delivery(engine, ids[(1, A)]).state == "sent"
    assert metrics.sample("newsletter_late_reports_total", kind="complaint", source="arf") == before + 1
    # An import does not bring them back, nor does a sign-up mail them a confirmation.
    csv = Path("subs.csv")
    csv.write_text(f"email,name,regions\n{A},Alice,RU\n")
    assert import_csv(engine, csv).suppressed == 1
    assert request_subscription(engine, make_input(A, None, "RU"), via=ChangeVia.FORM, now=NOW) is None
    assert subscriber(engine, A).status == "complained"
    assert events(engine, A)[-1][0] == "complained"


def test_a_bounced_address_may_still_sign_up_again(engine):
    """Only a complaint blocks the sign-up form; a bounced reader who fixed their mailbox
    gets a confirmation mail (and becomes active only by its link)."""
    ids = sent_editions(engine, [A])
    _apply(engine, dsn(A, to=RETURN_PATH.for_delivery(ids[(1, A)])))
    assert request_subscription(engine, make_input(A, None, "RU"), via=ChangeVia.FORM, now=NOW) is not None


# -- mailboxes -----------------------------------------------------------------------------

def _maildir(tmp_path: Path, messages: dict[str, bytes]) -> Path:
    root = tmp_path / "Maildir"
    for sub in ("new", "cur", "tmp"):
        (root / sub).mkdir(parents=True)
    for name, data in messages.items():
        (root / "new" / name).write_bytes(data)
    return root


def test_a_maildir_is_processed_once_and_a_bad_message_is_kept(engine, settings):
    settings = settings.model_copy(update={"bounce_address": BOUNCE_ADDRESS})
    ids = sent_editions(engine, [A, B])
    box = _maildir(Path.cwd(), {
        "1.a": dsn(A, to=RETURN_PATH.for_delivery(ids[(1, A)])),
        "2.b": arf(B, report_id="<c@fbl>", mail_from=RETURN_PATH.for_delivery(ids[(1, B)])),
        "6.forged": dsn(B, to=BOUNCE_ADDRESS, report_id="<f@attacker>"),
        "3.big": b"Subject: x\r\n\r\n" + b"x" * (MAX_REPORT_BYTES + 10),
        "4.reply": b"Subject: Out of office\r\n\r\naway\r\n",
        "5.stranger": dsn("stranger@example.net", to="x@example.org", report_id="<s@mx>"),
    })
    summary = process_maildir(engine, settings, box, now=NOW)
    assert summary.messages == 6 and dict(summary.applied) == {"permanent": 1, "complaint": 1}
    assert summary.unmatched == 1 and summary.unverified == 1 and sum(summary.ignored.values()) == 1
    assert summary.kept == [f"new/3.big: {MAX_REPORT_BYTES + 24} bytes, over the {MAX_REPORT_BYTES} read"]
    assert sorted(p.name for p in (box / "cur").iterdir()) == [
        "1.a:2,S", "2.b:2,S", "3.big:2,F", "4.reply:2,S", "5.stranger:2,S", "6.forged:2,S"]
    assert (box / "cur" / "3.big:2,F").stat().st_size == MAX_REPORT_BYTES + 24  # kept whole
    assert subscriber(engine, A).status == "bounced" and subscriber(engine, B).status == "complained"
    # A second run reads nothing.
    assert process_maildir(engine, settings, box, now=NOW).messages == 0


def test_an_mbox_is_only_read_and_reading_it_twice_changes_nothing(engine, settings):
    ids = sent_editions(engine, [A, B])
    path = Path("bounces.mbox")
    box = mailbox.mbox(path)
    box.add(dsn(A, to=RETURN_PATH.for_delivery(ids[(1, A)])))
    box.add(dsn(B, status="4.2.2", report_id="<t@mx>", to=RETURN_PATH.for_delivery(ids[(1, B)])))
    box.close()
    settings = settings.model_copy(update={"bounce_address": BOUNCE_ADDRESS})
    content = path.read_bytes()
    first = process_mbox(engine, settings, path, now=NOW)
    assert dict(first.applied) == {"permanent": 1, "transient": 1}
    second = process_mbox(engine, settings, path, now=NOW)
    assert second.duplicates == 2 and not second.applied and path.read_bytes() == content
    assert subscriber(engine, B).transient_bounces == 1


def test_the_cli_processes_a_maildir_and_says_what_it_kept(engine, run_cli, db_url):
    ids = sent_editions(engine, [A])
    box = _maildir(Path.cwd(), {"1": dsn(A, to=RETURN_PATH.for_delivery(ids[(1, A)])),
                                "2": b"\x00" * (MAX_REPORT_BYTES + 1)})
    env = {"NEWSLETTER_SECRET_KEY": SECRET, "NEWSLETTER_BOUNCE_ADDRESS": BOUNCE_ADDRESS}
    result = run_cli("bounces", "process", "--maildir", str(box), env=env)
    assert result.code == 1
    assert "2 messages read; applied: 1 permanent; 0 already processed" in result.out
    assert f"kept: new/2: {MAX_REPORT_BYTES + 1} bytes" in result.err
    assert subscriber(engine, A).status == "bounced"
    again = run_cli("bounces", "process", "--maildir", str(box), env=env)
    assert again.code == 0 and again.out.startswith("0 messages read")
    none = run_cli("bounces", "process", env=env)
    assert none.code == 2 and "set NEWSLETTER_BOUNCE_MAILBOX" in none.err
    assert run_cli("bounces", "process", "--mbox", "missing.mbox", env=env).code == 2


SAMPLE_BYTES = [p.read_bytes() for p in sorted((Path(__file__).parent / "samples" / "bounces").glob("*.eml"))]


@given(st.sampled_from(SAMPLE_BYTES), st.integers(min_value=0, max_value=20_000), st.binary(max_size=64))
def test_a_cut_or_garbled_report_reads_or_is_kept_never_crashes(data, cut, junk):
    """Real reports cut anywhere and with bytes spliced in: a reading, or UnreadableReport."""
    mangled = data[:cut] + junk + data[cut + len(junk):]
    try:
        reading = _read(mangled)
    except UnreadableReport:
        return
    for report in reading.reports:
        assert report.kind in BounceKind and len(report.fingerprint) == 64
        assert report.diagnostic is None or (len(report.diagnostic) <= 500 and "\n" not in report.diagnostic)
        assert report.recipient is None or (len(report.recipient) <= 320 and "\n" not in report.recipient)
