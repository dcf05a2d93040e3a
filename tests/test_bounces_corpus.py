"""The whole labelled sisimai corpus (tests/samples/corpus) read by our reader: right by
reason -> kind, and never a reader suppressed for a reason that is not theirs; the
misreads issue 20 names, each on its own; and hostile mail (fuzzed, or 60,000 MIME parts)."""

from __future__ import annotations

import email
import json

import pytest
from hypothesis import HealthCheck, example, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from tests.bounce_support import RETURN_PATH, dsn
from tests.corpus_support import CORPUS, DISAGREEMENTS, LABELS, expected_kind, score, tagged
from worker.bounces.reasons import KINDS, Reason, by_code, find_code
from worker.bounces.reports import MAX_PARTS, UnreadableReport, read_report

SAMPLES = sorted(CORPUS.glob("*.eml"))
KINDS_READ = {"permanent", "transient", "complaint", "sender", "review", "ignored"}


def _read(data: bytes):
    return read_report(data, return_path=RETURN_PATH, message_id_domain="localhost")


def test_the_corpus_is_read_right_and_suppresses_no_reader_wrongly():
    results = score()
    right = sum(r.right for r in results)
    wrongful = [(r.name, sorted(r.expected), sorted(r.got), r.reasons) for r in results if r.wrongful]
    print(f"corpus: {right}/{len(results)} right by reason -> kind ({right / len(results):.1%}); "
          f"{len(wrongful)} wrongful suppressions")
    assert len(results) == len(LABELS) >= 550
    assert wrongful == []
    assert right / len(results) >= 0.95


def test_the_labels_and_our_disagreements_are_complete_and_explained():
    assert sorted(p.name for p in SAMPLES) == sorted(LABELS)
    assert "BSD 2-CLAUSE LICENSE" in (CORPUS / "LICENSE").read_text()
    reasons = {e["reason"] for entries in LABELS.values() for e in entries}
    assert reasons <= {r.value for r in Reason} | {"onhold"}
    assert {expected_kind(e) for entries in LABELS.values() for e in entries} <= KINDS_READ
    for name, why in DISAGREEMENTS.items():
        assert name in LABELS, name
        kinds = why["kind"] if isinstance(why["kind"], list) else [why["kind"]]
        assert set(kinds) <= KINDS_READ and len(why["why"]) > 40, name
        assert why["sisimai"] == "/".join(sorted({e["reason"] for e in LABELS[name]})), name


def test_every_reason_has_a_kind_and_only_mailbox_reasons_are_permanent():
    permanent = {r.value for r, k in KINDS.items() if k is not None and k.value == "permanent"}
    assert permanent == {"userunknown", "hostunknown", "suspend", "hasmoved", "notaccept"}
    assert KINDS[Reason.UNDEFINED].value == "review" and KINDS[Reason.VACATION] is None


# -- the misreads of issue 20, each -----------------------------------------------------------

def test_an_ip_address_in_the_diagnostic_is_not_a_status_code():
    assert find_code("550 rejected by [1.2.3.4] (5.7.1)") == "5.7.1"
    assert find_code("host [192.0.2.5] said: 550 mailbox unavailable") is None
    # Before: "[10.5.1.1]" read as 5.1.1, a permanent bounce for a refusal that says nothing.
    (report,) = _read(dsn("a@example.net", status="5.0.0",
                          diagnostic="smtp; 550 host mx [10.5.1.1] said: message refused")).reports
    assert (report.code, report.reason, report.kind.value) == ("5.0.0", "undefined", "review")


def test_original_recipient_is_used_when_the_final_one_is_no_address():
    data = dsn("a@example.net").replace(b"Final-Recipient: rfc822; a@example.net", b"Final-Recipient: LOCAL;")
    (report,) = _read(data).reports
    assert report.recipient == "a@example.net"


def test_an_x7x_code_whose_words_say_no_such_user_is_the_readers_mailbox():
    (report,) = _read(dsn("a@example.net", status="5.7.1", diagnostic="smtp; 550 5.7.1 No such user")).reports
    assert (report.reason, report.kind.value) == ("userunknown", "permanent")
    (ours,) = _read(dsn("a@example.net", status="5.7.1",
                        diagnostic="smtp; 550 5.7.1 Message rejected as spam by Content Filtering")).reports
    assert ours.kind.value == "sender"


def test_generic_codes_say_what_their_words_say():
    cases = {"smtp; 550 5.0.0 Please use the smtp server of your ISP": ("blocked", "sender"),
             "smtp; 554 5.6.0 Message scored as spam": ("spamdetected", "sender"),
             "smtp; 552 5.2.0 Mailbox over quota": ("mailboxfull", "transient"),
             "smtp; 550 5.1.0 Sender rejected: too many messages per hour": ("mailboxfull", "transient"),
             "smtp; 550 5.0.0 Something went wrong": ("undefined", "review"),
             "smtp; 550 5.1.0 Sender denied": ("undefined", "review"),
             "smtp; 550 5.1.0 Address rejected": ("rejected", "sender"),
             "smtp; 550 5.1.0 No such user here": ("userunknown", "permanent")}
    for diagnostic, (reason, kind) in cases.items():
        (report,) = _read(dsn("a@example.net", status="5.0.0", diagnostic=diagnostic)).reports
        assert (report.reason, report.kind.value) == (reason, kind), diagnostic


def test_the_projects_own_exim_sample_is_a_refusal_about_us():
    (report,) = _read((CORPUS / "lhost-exim-01.eml").read_bytes()).reports
    assert (report.code, report.reason, report.kind.value) == ("5.7.0", "blocked", "sender")


def test_ses_notifications_arriving_by_mail_read_as_what_they_are():
    delivered = _read(tagged((CORPUS / "lhost-amazonses-12.eml").read_bytes()))
    assert delivered.reports == [] and delivered.ignored.startswith("SES Delivery notification")
    (complaint,) = _read(tagged((CORPUS / "lhost-amazonses-11.eml").read_bytes())).reports
    assert (complaint.kind.value, complaint.reason, complaint.source) == ("complaint", "feedback", "ses")
    assert complaint.address_trusted is False and complaint.delivery_id == 4242
    (bounce,) = _read(tagged((CORPUS / "lhost-amazonses-10.eml").read_bytes())).reports
    assert (bounce.kind.value, bounce.reason, bounce.code) == ("permanent", "userunknown", "5.1.1")


@pytest.mark.parametrize("status", ["5.1", "abc", "5.1.1.1"])
def test_an_ses_notification_by_mail_with_no_status_code_is_read_by_its_words(status):
    """SES's `status` is data: what is no enhanced status code is read as none, never a crash."""
    notification = {"notificationType": "Bounce", "mail": {"source": RETURN_PATH.for_delivery(7)},
                    "bounce": {"bounceType": "Permanent", "bounceSubType": "General", "feedbackId": "f-1",
                               "bouncedRecipients": [{"emailAddress": "a@example.net", "status": status,
                                                      "diagnosticCode": "smtp; 550 mailbox is full"}]}}
    mail = b"From: no-reply@sns.amazonaws.com\r\nContent-Type: text/plain\r\n\r\n" + json.dumps(notification).encode()
    (report,) = _read(mail).reports
    assert (report.kind.value, report.reason, report.code, report.delivery_id) == ("transient", "mailboxfull", None, 7)


def test_what_is_no_status_code_names_no_reason():
    assert [by_code(c) for c in ("5.1", "abc", "5.1.1.1", "5.1.1 ", "")] == [None] * 5
    assert by_code("5.1.1") is Reason.USER_UNKNOWN


def test_a_tagged_report_whose_reason_cannot_be_read_is_kept_for_review_never_permanent():
    mail = (b"From: MAILER-DAEMON@mx.example.net\r\nSubject: Returned mail\r\nDelivered-To: "
            + RETURN_PATH.for_delivery(7).encode() + b"\r\n\r\nYour mail could not be handled.\r\n")
    (report,) = _read(mail).reports
    assert (report.kind.value, report.reason, report.delivery_id) == ("review", "undefined", 7)
    untagged = _read(mail.replace(RETURN_PATH.for_delivery(7).encode(), b"bounces@bounce.example.org"))
    assert untagged.reports == [] and untagged.ignored.startswith("not a bounce")


# -- hostile mail --------------------------------------------------------------------------

def test_a_report_of_sixty_thousand_mime_parts_is_kept_after_a_bounded_look(monkeypatch):
    """A 2 MB DSN of 60,000 tiny parts: never parsed into 60,000 parts (counted: the parts the
    parser builds), kept for a human instead."""
    parts = b"".join(b"--B\r\nContent-Type:text/plain\r\n\r\n\r\n" for _ in range(60_000))
    data = (b"Content-Type: multipart/report; report-type=delivery-status; boundary=B\r\n\r\n" + parts
            + b"--B--\r\n")
    assert len(data) < 2 * 1024 * 1024
    built = []
    original = email.message.Message.__init__

    def counting(self, *args, **kwargs):
        built.append(1)
        original(self, *args, **kwargs)

    monkeypatch.setattr(email.message.Message, "__init__", counting)
    with pytest.raises(UnreadableReport, match=f"over {MAX_PARTS} MIME parts"):
        _read(data)
    assert len(built) == 0
    # Just under the bound: read, and every walk over it stops at MAX_PARTS.
    few = (b"Content-Type: multipart/mixed; boundary=B\r\n\r\n"
           + b"".join(b"--B\r\nContent-Type: text/plain\r\n\r\nx\r\n" for _ in range(MAX_PARTS * 2 - 1)) + b"--B--\r\n")
    built.clear()
    assert _read(few).reports == []
    assert len(built) == MAX_PARTS * 2  # the parser's, once; no more for our walks


@hsettings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(SAMPLES), st.integers(min_value=0, max_value=30_000), st.binary(max_size=200),
       st.sampled_from([b"", b"Delivered-To: " + RETURN_PATH.for_delivery(5).encode() + b"\r\n"]))
@example(CORPUS / "lhost-bigfoot-02.eml", 1181, b"\x80", b"")  # an 8-bit byte in a DSN field: a Header
def test_no_mail_makes_the_reader_raise(path, cut, junk, tag):
    """Any corpus mail, cut anywhere, with bytes spliced in, tagged or not: a reading or
    UnreadableReport (kept for a human), never another exception."""
    data = path.read_bytes()
    mangled = tag + data[:cut] + junk + data[cut + len(junk):]
    try:
        reading = _read(mangled)
    except UnreadableReport:
        return
    for report in reading.reports:
        assert report.kind.value in KINDS_READ and (report.reason is None or Reason(report.reason))
        assert report.diagnostic is None or len(report.diagnostic) <= 500


@hsettings(max_examples=100, deadline=None)
@given(st.text(max_size=300), st.text(alphabet="0123456789. ", max_size=20), st.sampled_from(["failed", "delayed", ""]))
def test_no_dsn_field_makes_the_reader_raise(diagnostic, status, action):
    data = dsn("a@example.net", status=status.replace("\n", " ") or "5.0.0", action=action,
               diagnostic="smtp; " + " ".join(diagnostic.split()))
    reading = _read(data.decode("utf-8", "replace").encode("utf-8", "replace"))
    assert json.dumps([r.reason for r in reading.reports])


def test_formats_that_were_not_read_at_all_are_read():
    tag = RETURN_PATH.for_delivery(11).encode()
    # message/xdelivery-status (Exchange), and a DSN part without its per-message block.
    x = dsn("a@example.net").replace(b"Content-Type: message/delivery-status", b"Content-Type: message/xdelivery-status")
    assert [(r.reason, r.kind.value) for r in _read(x).reports] == [("userunknown", "permanent")]
    headless = dsn("a@example.net").replace(b"Reporting-MTA: dns; mx.example.net\n\n", b"")
    (report,) = _read(headless).reports
    assert (report.recipient, report.reason) == ("a@example.net", "userunknown")
    # qmail: "#5.7.17" is a mailbox code, and a bare "not a valid user" text.
    qmail = (b"Delivered-To: " + tag + b"\r\nFrom: MAILER-DAEMON@mx.example.net\r\nSubject: failure notice\r\n\r\n"
             b"Hi. This is the qmail-send program at mx.example.net.\r\n"
             b"I'm afraid I wasn't able to deliver your message to the following addresses.\r\n"
             b"This is a permanent error; I've given up. Sorry it didn't work out.\r\n\r\n"
             b"<a@example.net>:\r\nSorry, this mailbox was disabled by its owner. (#5.7.17)\r\n\r\n"
             b"<b@example.net>:\r\nb is not a valid user\r\n\r\n--- Below this line is a copy of the message.\r\n")
    reports = {r.recipient: (r.code, r.reason, r.kind.value) for r in _read(qmail).reports}
    assert reports == {"a@example.net": ("5.7.17", "hasmoved", "permanent"),
                       "b@example.net": (None, "userunknown", "permanent")}


def test_the_bounce_detectors_read_the_head_of_a_big_report_only(monkeypatch):
    """flufl.bounce runs its regular expressions over every line: a report near the 2 MB cap
    is scanned over its first MAX_SCAN bytes (measured: 2.4 s of CPU before, on one long line)."""
    from worker.bounces import reports

    seen: list[int] = []
    original = reports._all_failures

    def spy(msg):
        seen.append(len(msg.as_bytes()))
        return original(msg)

    monkeypatch.setattr(reports, "_all_failures", spy)
    body = "\n".join(f"<r{n}@example.net>:\nSorry, no mailbox here by that name. (#5.1.1)\n" for n in range(3))
    mail = ("Delivered-To: " + RETURN_PATH.for_delivery(5) + "\nSubject: failure notice\n\n" + body).encode()
    mail += b"x" * (1_900_000 - len(mail))
    reading = _read(mail)
    assert seen and max(seen) <= reports.MAX_SCAN + 200
    assert {(r.recipient, r.reason) for r in reading.reports} == {
        (f"r{n}@example.net", "userunknown") for n in range(3)}
