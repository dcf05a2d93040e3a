"""The confirmation mail leaves as a digest does: DKIM-signed by the same signer, from a
VERP return path of its own kind that names the sign-up, so that its bounce, read by the
same bounce processing, ends the sign-up."""

from __future__ import annotations

import json
from pathlib import Path

import dkim
import pytest
import sqlalchemy as sa
from pydantic import SecretStr

from tests.bounce_support import BOUNCE_ADDRESS, NOW, SECRET, arf, bounce_events, dsn, events, subscriber
from tests.test_bounces import _maildir
from tests.test_dkim_signing import _signed_headers, _with_field, key  # noqa: F401 - the fixture
from tests.test_readers_signup import Readers, confirm_path, for_readers
from worker.bounces.mailboxes import process_maildir
from worker.bounces.verp import ReturnPath, make_signup_tag, read_signup_tag, read_tag
from worker.readers.signup import request_subscription
from worker.readers.subscribers import SubscriberInput, check_address
from worker.store.db import session_scope
from worker.store.models import ChangeVia, Subscriber

RETURN_PATH = ReturnPath.parse(BOUNCE_ADDRESS, SECRET)
TYPO = "anna@exmaple.org"


@pytest.fixture
def signed_readers(engine, settings, smtp_server, key):  # noqa: F811 - the imported fixture
    path, _ = key
    return Readers(engine, for_readers(settings.model_copy(update={"secret_key": SecretStr(SECRET)}), **{
        "email_backend": "smtp", "smtp_host": "127.0.0.1", "smtp_port": smtp_server.port, "smtp_timeout": 5,
        "from_address": "Melange News <digest@news.example>", "bounce_address": BOUNCE_ADDRESS,
        "dkim_selector": "mail", "dkim_domain": "news.example", "dkim_key_file": str(path)}))


def test_a_bounced_confirmation_mail_ends_the_sign_up(signed_readers, smtp_server, key, run_cli):  # noqa: F811
    _, dns = key
    readers = signed_readers
    assert readers.subscribe(TYPO, regions="RU").status_code == 200
    readers.settle()
    [sent] = smtp_server.received
    row = readers.row(TYPO)
    # Sent from the sign-up's own return path, signed as a digest is.
    assert sent.rcpt == TYPO and sent.mail_from == RETURN_PATH.for_signup(row.id, row.confirm_nonce)
    assert sent.mail_from.startswith("bounces+s") and sent.mail_from.endswith("@bounce.example.org")
    assert RETURN_PATH.delivery_of(sent.mail_from) is None  # never read as a delivery's tag
    assert sent.data.startswith(b"DKIM-Signature:") and dkim.verify(sent.data, dnsfunc=dns)
    assert {"from", "to", "subject", "date", "message-id", "cc", "reply-to"} <= set(_signed_headers(sent.data))
    assert not dkim.verify(_with_field(sent.data, b"Cc: someone@evil.example", first=False), dnsfunc=dns)

    # The receiving MX refuses it later: its DSN comes back to the return path.
    box = _maildir(Path.cwd(), {"1.dsn": dsn(TYPO, to=sent.mail_from, report_id="<confirm-dsn@mx.example.net>")})
    env = {"NEWSLETTER_SECRET_KEY": SECRET, "NEWSLETTER_BOUNCE_ADDRESS": BOUNCE_ADDRESS}
    result = run_cli("bounces", "process", "--maildir", str(box), env=env)
    assert result.code == 0 and "1 messages read; applied: 1 permanent;" in result.out, result.out + result.err

    after = subscriber(readers.engine, TYPO)
    assert (after.status, after.confirm_nonce) == ("bounced", None)
    assert events(readers.engine, TYPO) == [
        ("requested", "form", "asked for RU"),
        ("bounced", "bounce", "confirmation mail bounced 5.1.1 (dsn)")]
    [event] = bounce_events(readers.engine)
    assert (event.kind, event.subscriber_id, event.delivery_id, event.edition_id, event.code) == \
        ("permanent", row.id, None, None, "5.1.1")
    # Its link is dead; the same report again, or another copy of it, changes nothing.
    landing = readers.client.get(confirm_path(sent.message))
    assert landing.status_code == 410
    (box / "new" / "2.dsn").write_bytes(dsn(TYPO, to=sent.mail_from, report_id="<confirm-dsn@mx.example.net>"))
    again = run_cli("bounces", "process", "--maildir", str(box), env=env)
    assert again.code == 0 and "applied: none" in again.out
    assert len(events(readers.engine, TYPO)) == 2 and len(bounce_events(readers.engine)) == 1


def _requested(engine, email: str, **kwargs):
    address, email_key = check_address(email)
    item = SubscriberInput(email=address, email_key=email_key, name=None, regions=("RU",), **kwargs)
    return request_subscription(engine, item, via=ChangeVia.FORM, now=NOW)


def _process(engine, settings, *messages: bytes):
    settings = settings.model_copy(update={"bounce_address": BOUNCE_ADDRESS, "secret_key": SecretStr(SECRET)})
    box = _maildir(Path.cwd(), {f"{n}.eml": data for n, data in enumerate(messages)})
    return process_maildir(engine, settings, box, now=NOW)


def _row(engine, email: str) -> Subscriber:
    with session_scope(engine) as session:
        return session.scalar(sa.select(Subscriber).where(Subscriber.email_key == email))


def test_a_temporary_failure_keeps_the_sign_up_and_lets_it_ask_again(engine, settings):
    due = _requested(engine, TYPO)
    to = RETURN_PATH.for_signup(due.subscriber_id, due.nonce)
    summary = _process(engine, settings, dsn(TYPO, status="4.2.2", to=to))
    assert dict(summary.applied) == {"transient": 1}
    row = _row(engine, TYPO)
    assert (row.status, row.confirm_nonce, row.confirm_sent_at) == ("pending", due.nonce, None)
    assert events(engine, TYPO)[-1] == ("confirm-failed", "bounce", "confirmation mail failed for now 4.2.2 (dsn)")


def test_a_complaint_about_the_confirmation_mail_suppresses_the_address(engine, settings):
    due = _requested(engine, TYPO)
    to = RETURN_PATH.for_signup(due.subscriber_id, due.nonce).encode()
    summary = _process(engine, settings, arf(TYPO).replace(b"To: abuse@example.org", b"To: " + to))
    assert dict(summary.applied) == {"complaint": 1}
    assert _row(engine, TYPO).status == "complained"
    assert _requested(engine, TYPO) is None  # the form mails them nothing more


def test_an_active_reader_asking_for_other_regions_keeps_their_subscription(engine, settings):
    with session_scope(engine) as session:
        session.add(Subscriber(email=TYPO, email_key=TYPO, regions="UA", status="active"))
    due = _requested(engine, TYPO)
    assert due.already_active
    _process(engine, settings, dsn(TYPO, to=RETURN_PATH.for_signup(due.subscriber_id, due.nonce)))
    row = _row(engine, TYPO)
    assert (row.status, row.regions, row.confirm_nonce) == ("active", "UA", None)
    assert events(engine, TYPO)[-1] == ("confirm-failed", "bounce", "confirmation mail bounced 5.1.1 (dsn)")


def test_a_report_about_a_link_no_longer_live_changes_nothing(engine, settings):
    due = _requested(engine, TYPO)
    with session_scope(engine) as session:
        session.get(Subscriber, due.subscriber_id).confirm_nonce = "a-newer-link-nonce"
    summary = _process(engine, settings, dsn(TYPO, to=RETURN_PATH.for_signup(due.subscriber_id, due.nonce)))
    assert summary.unmatched == 1 and not summary.applied
    assert _row(engine, TYPO).status == "pending" and bounce_events(engine) == []


def test_sign_up_tags_and_delivery_tags_are_never_read_as_each_other():
    tag = make_signup_tag(SECRET, 42, "nonce-1")
    found = read_signup_tag(SECRET, tag.upper())
    assert found is not None and found.subscriber_id == 42 and found.names("nonce-1") and not found.names("nonce-2")
    assert read_tag(SECRET, tag) is None and read_tag(SECRET, tag[1:]) is None
    assert read_signup_tag("another-secret", tag) is None
    assert read_signup_tag(SECRET, tag[:-1] + ("0" if tag[-1] != "0" else "1")) is None
    assert read_signup_tag(SECRET, "s" + RETURN_PATH.for_delivery(42).split("+")[1].split("@")[0]) is None
    assert RETURN_PATH.signup_of(RETURN_PATH.for_delivery(42)) is None
    assert RETURN_PATH.signup_of(f"bounces+{tag}@elsewhere.example") is None


def test_a_dry_run_says_what_a_real_run_does_with_confirmation_mail_bounces(engine, settings):
    """The dry run asks apply's own matching: a live sign-up's bounce would be applied to that
    sign-up, one about a link no longer live would not; the real run then does just that."""
    live, stale = _requested(engine, TYPO), _requested(engine, "bob@example.net")
    stale_to = RETURN_PATH.for_signup(stale.subscriber_id, stale.nonce)
    with session_scope(engine) as session:
        session.get(Subscriber, stale.subscriber_id).confirm_nonce = "a-newer-link-nonce"
    settings = settings.model_copy(update={"bounce_address": BOUNCE_ADDRESS, "secret_key": SecretStr(SECRET)})
    box = _maildir(Path.cwd(), {"1.eml": dsn(TYPO, to=RETURN_PATH.for_signup(live.subscriber_id, live.nonce)),
                                "2.eml": dsn("bob@example.net", to=stale_to)})
    dry = process_maildir(engine, settings, box, now=NOW, dry_run=True)
    assert [(r["kind"], r["delivery"], r["signup"], r["ignored"]) for r in dry.readings] == [
        ("permanent", None, live.subscriber_id, None),
        (None, None, None, "matches no delivery or live confirmation link of ours")]
    real = process_maildir(engine, settings, box, now=NOW)
    assert (dict(real.applied), real.unmatched) == ({"permanent": 1}, 1)
    assert (_row(engine, TYPO).status, _row(engine, "bob@example.net").status) == ("bounced", "pending")


def test_a_confirmation_mail_bounce_kept_for_review_and_decided_permanent_ends_the_sign_up(engine, settings,
                                                                                            run_cli):
    due = _requested(engine, TYPO)
    to = RETURN_PATH.for_signup(due.subscriber_id, due.nonce)
    summary = _process(engine, settings, dsn(TYPO, status="5.0.0", diagnostic="smtp; 550 Could not be handled",
                                             to=to))
    assert dict(summary.applied) == {"review": 1} and _row(engine, TYPO).status == "pending"
    env = {"NEWSLETTER_SECRET_KEY": SECRET, "NEWSLETTER_BOUNCE_ADDRESS": BOUNCE_ADDRESS}
    [waiting] = json.loads(run_cli("bounces", "review", "--json", env=env).out)
    assert waiting["reader"] == TYPO and waiting["edition"] is None
    decided = run_cli("bounces", "review", "--permanent", str(waiting["id"]), env=env)
    assert decided.code == 0 and decided.out.strip() == f"report {waiting['id']}: permanent"
    row = _row(engine, TYPO)
    assert (row.status, row.confirm_nonce) == ("bounced", None)
    assert events(engine, TYPO)[-1][:2] == ("bounced", "bounce")
    assert events(engine, TYPO)[-1][2].startswith("confirmation mail reviewed by ")
